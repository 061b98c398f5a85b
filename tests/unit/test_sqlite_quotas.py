"""History quotas of the SQLite engine (bytes, age, rooms): oldest first, rooms with nothing left
forgotten, and their seqs never reused, also after a restart."""

import contextlib
import sqlite3
import threading
import time

from chatserver.engines.sqlite import SqliteEngine
from chatserver.engines.sqlite_quotas import HistoryQuotas
from tests.helpers import MeasuredSqlite, RoomsHub, wait_for

MIB = 2**20


def engine(path, hub, **quotas):
    store = SqliteEngine(str(path), prune_interval=0.02, quotas=HistoryQuotas(**quotas))
    store.start(hub)
    return store


def rows(path) -> dict:
    """room -> its stored seqs."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        found = {}
        for room, seq in conn.execute("SELECT room, seq FROM events ORDER BY room, seq"):
            found.setdefault(room, []).append(seq)
        return found


def known_rooms(path) -> set:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return {room for (room,) in conn.execute("SELECT room FROM rooms")}


def used_bytes(path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def test_byte_quota_prunes_oldest_first_keeping_each_room_a_run(tmp_path):
    """Past history_max_bytes the oldest events go first; what is left of each room is its newest
    events, with no hole, and the file's used pages come back under the quota."""
    path = tmp_path / "h.db"
    hub = RoomsHub()
    store = engine(path, hub, max_bytes=400_000)
    for n in range(40):
        hub.publish(store, f"r{n % 4}", [f"{n:03d} " + "q" * 1000] * 25)
    wait_for(lambda: used_bytes(path) <= 400_000, timeout=10)
    store.close()
    kept = rows(path)
    assert kept and sum(len(seqs) for seqs in kept.values()) < 1000
    for room, seqs in kept.items():
        # its newest events, no hole: a suffix of 1..250, or, if a quota pass forgot the room for a
        # moment between two bursts (under load), of the seqs it went on with above the file's floor
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[-1] >= 250, room
    assert min(seqs[0] for seqs in kept.values()) > 1


def test_age_quota_forgets_emptied_rooms_and_seqs_go_on_above_them(tmp_path):
    """Events older than history_max_age go; a room left empty is forgotten, here and in the
    hub, and its next chat, also after a restart, takes a seq above every seq it had (so does a
    new room)."""
    path = tmp_path / "h.db"
    hub = RoomsHub()
    store = engine(path, hub, max_age=0.2)
    hub.publish(store, "old", ["a", "b", "c"])
    wait_for(lambda: "old" in hub.forgotten)
    assert known_rooms(path) == set() and rows(path) == {}
    assert [e["seq"] for e in hub.publish(store, "old", ["d"])] == [4]
    assert [e["seq"] for e in hub.publish(store, "other", ["x"])] == [4]
    store.close()

    hub = RoomsHub()
    store = engine(path, hub)
    assert store.last_seqs() == {"old": 4, "other": 4}
    assert [e["seq"] for e in hub.publish(store, "fresh", ["y"])] == [4]  # above the floor, 3
    store.close()


def test_room_quota_forgets_the_quietest_rooms_but_not_one_with_members(tmp_path):
    """Past history_max_rooms the rooms quiet longest are forgotten, whole; a room someone is in
    is kept however quiet."""
    path = tmp_path / "h.db"
    hub = RoomsHub(live={"r0"})
    store = engine(path, hub, max_rooms=3)
    for n in range(6):
        hub.publish(store, f"r{n}", ["hi"])
        time.sleep(0.01)
    wait_for(lambda: len(known_rooms(path)) == 3)
    store.close()
    assert known_rooms(path) == {"r0", "r4", "r5"}
    assert sorted(rows(path)) == ["r0", "r4", "r5"]
    assert sorted(hub.forgotten) == ["r1", "r2", "r3"]


def test_many_rooms_open_without_retention_work(tmp_path):
    """Opening a file of 200,000 rooms over its quotas does no retention work: that runs after
    start, on the writer thread, a slice per pass (so opening takes as long as reading the rooms,
    whatever the machine; the bench measures how long)."""
    path = tmp_path / "h.db"
    SqliteEngine(str(path)).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany("INSERT INTO rooms VALUES (?, 1)", ((f"room-{i}",) for i in range(200_000)))
        conn.executemany("INSERT INTO events (room, seq, sender, text, ts) VALUES (?, 1, 'ann', 'hello', ?)",
                         ((f"room-{i}", 1e9 + i) for i in range(200_000)))
    passes = []

    class Watched(SqliteEngine):
        def _prune(self, rooms):
            passes.append(threading.current_thread().name)
            super()._prune(rooms)

    store = Watched(str(path), per_room=1, quotas=HistoryQuotas(max_rooms=190_000))
    assert passes == [] and len(store.last_seqs()) == 200_000
    assert len(known_rooms(path)) == 200_000
    store.start(RoomsHub())
    wait_for(lambda: len(known_rooms(path)) == 190_000, timeout=30)
    store.close()
    assert set(passes) == {"roomchat-store"}

def test_file_and_wal_stay_within_the_byte_quota_under_writes_and_overlapping_readers(tmp_path):
    """Chats written as fast as the engine takes them while two readers keep overlapping (which
    held SQLite's checkpoints off, so the WAL grew without end): file + WAL never pass the quota
    by more than a commit and a retention pass (measured after each: true maxima), whatever the
    machine's speed, because the bound is kept per bytes written."""
    quota, text = 4 * MIB, "\U0001f600" * 2000  # 8000 bytes, the longest text
    quotas = HistoryQuotas(max_bytes=quota)
    store = MeasuredSqlite(str(tmp_path / "h.db"), quotas=quotas)
    hub = RoomsHub()
    store.start(hub)
    stop = threading.Event()

    def read_all_the_time():
        while not stop.is_set():
            store.read("r0", limit=200, max_bytes=256 * 1024)

    readers = [threading.Thread(target=read_all_the_time) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for n in range(300):  # 3000 chats: 24 MB of texts, six times the quota
            hub.publish(store, f"r{n % 10}", [text] * 10)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    store.close()
    assert store.commits_measured >= 20
    assert store.peak_wal <= quotas.wal_max + 2 * MIB, (store.peak_wal, quotas.wal_max)
    assert store.peak_total <= quota + 2 * MIB, store.peak_total
