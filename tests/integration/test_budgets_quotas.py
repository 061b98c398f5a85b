"""Storage quotas on a real server (issue 10, item 8; issue 20: the memory engine too): old
history is pruned, a room with none left is forgotten without its seqs ever coming back, and a
file of 200,000 rooms starts fast."""

import contextlib
import sqlite3
import time

import pytest

from chatserver.engines.memory import MemoryEngine
from chatserver.engines.sqlite import SqliteEngine
from chatserver.engines.sqlite_quotas import HistoryQuotas
from tests.helpers import wait_for


def known_rooms(path) -> set:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return {room for (room,) in conn.execute("SELECT room FROM rooms")}


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_pruned_room_is_forgotten_and_its_seqs_go_on(make_server, connect, tmp_path, kind):
    """Past --history-max-age a room's events go; once nobody is in it, it is forgotten; a later
    joiner finds no history, a client resuming after its last seq misses nothing, and its next
    chat takes a seq above every one it had. The same in a file and in memory."""
    if kind == "sqlite":
        engine = SqliteEngine(str(tmp_path / "h.db"), prune_interval=0.05, quotas=HistoryQuotas(max_age=0.5))
    else:
        engine = MemoryEngine(max_age=0.5)  # it prunes when it is used: the reads below
    server = make_server(engine=engine)
    talker = connect(server.url)
    talker.join("old")
    assert [e["seq"] for e in talker.chat_all("old", ["a", "b", "c"])] == [1, 2, 3]
    wait_for(lambda: engine.read("old") == [])
    assert "old" in engine.last_seqs()  # its events are gone, but a member is there: kept
    talker.request(type="leave", room="old")
    wait_for(lambda: engine.read("elsewhere") == [] and "old" not in engine.last_seqs(), timeout=5)
    resumer = connect(server.url)
    assert resumer.join("old", after=3)["history"] == []
    newcomer = connect(server.url)
    assert newcomer.join("old")["history"] == []
    resumer.recv_type("presence")
    assert [e["seq"] for e in newcomer.chat_all("old", ["d"])] == [4]
    assert resumer.recv_type("chat")["seq"] == 4


@pytest.mark.slow
def test_file_of_200k_rooms_is_pruned_to_the_quota_while_chat_goes_on(tmp_path, spawn, connect):
    """A history of 200,000 rooms over its room quota: the server starts and chats are
    acknowledged all along while the quota forgets the quietest rooms, a slice per pass.
    (That start-up does no retention work is tests/unit/test_sqlite_quotas.py's; how fast it
    starts and how long a chat waits meanwhile are the bench's, as they depend on the machine.)"""
    full = tmp_path / "full.db"
    SqliteEngine(str(full)).close()
    with contextlib.closing(sqlite3.connect(full)) as conn, conn:
        conn.executemany("INSERT INTO rooms VALUES (?, 1)", ((f"room-{i}",) for i in range(200_000)))
        conn.executemany("INSERT INTO events (room, seq, sender, text, ts) VALUES (?, 1, 'ann', 'hello there', ?)",
                         ((f"room-{i}", 1e9 + i) for i in range(200_000)))
    server = spawn("--db", str(full), "--history-max-rooms", "180000")
    peer = connect(server.url, timeout=60)  # acknowledged, however long a busy machine makes it wait
    peer.join("lobby")
    while len(known_rooms(full)) > 180_000:
        assert peer.chat_all("lobby", ["still answered?"])[0]["text"] == "still answered?"
        time.sleep(0.05)
    kept = known_rooms(full)
    assert "lobby" in kept and "room-20001" in kept and "room-20000" not in kept  # lobby counts: 200,001 rooms
