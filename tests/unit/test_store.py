"""History stores: MemoryStore and SqliteStore through one parametrized suite, then SQLite's own rules."""

import os
import sqlite3
import threading
import time

import pytest

from chatserver.config import Config
from chatserver.store import MemoryStore, SqliteStore, StoreError, open_store
from tests.helpers import wait_for

KINDS = ["memory", "sqlite"]


@pytest.fixture(params=KINDS)
def make_store(request, tmp_path):
    """make_store(per_room=...) -> a store of this run's kind; SQLite ones share one file, so a
    second call after close() reopens it. All are closed at teardown."""
    stores = []

    def make(per_room: int = 10000, **kwargs):
        if request.param == "memory":
            store = MemoryStore(per_room)
        else:
            store = SqliteStore(str(tmp_path / "history.db"), per_room, **kwargs)
        stores.append(store)
        return store

    make.kind = request.param
    yield make
    for store in stores:
        store.close()


def chat(room: str, seq: int, text: str | None = None, nick: str = "ann") -> dict:
    return {"type": "chat", "room": room, "from": nick, "text": text or f"{room} {seq}", "seq": seq, "ts": 1e9 + seq}


class Durable:
    """Plays the Registry: appends events and waits until the store says they are stored."""

    def __init__(self, store):
        self.store = store
        self.batches = []
        self.pending = []  # events append() answered False for, in append order
        self._cond = threading.Condition()
        store.on_durable = self._on_durable

    def _on_durable(self, events: list) -> None:
        with self._cond:
            self.batches.append(list(events))
            self._cond.notify_all()

    def reported(self) -> list:
        return [event for batch in self.batches for event in batch]

    def write(self, events) -> None:
        for event in events:
            if not self.store.append(event):
                self.pending.append(event)
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.reported()) >= len(self.pending), timeout=5)


def write(store, events) -> Durable:
    durable = Durable(store)
    durable.write(events)
    return durable


def seqs(events: list) -> list:
    return [event["seq"] for event in events]


# -- one suite for both stores -------------------------------------------------------------------


def test_empty_store_has_no_rooms(make_store):
    """A new store knows no room and reads nothing."""
    store = make_store()
    assert store.last_seqs() == {}
    assert store.read("lobby") == []
    assert isinstance(store.epoch, str) and store.epoch


def test_read_returns_events_as_appended(make_store):
    """Events come back with the same fields and values they were appended with."""
    store = make_store()
    events = [chat("lobby", 1, "hello ☃ \U0001f600"), chat("lobby", 2, "x" * 2000, nick="bob")]
    write(store, events)
    assert store.read("lobby") == events


def test_read_without_after_returns_the_last_limit_oldest_first(make_store):
    """Paging back: the newest `limit` events below `before`, oldest first."""
    store = make_store()
    write(store, [chat("a", n) for n in range(1, 11)] + [chat("b", n) for n in range(1, 4)])
    assert seqs(store.read("a")) == list(range(1, 11))
    assert seqs(store.read("a", limit=3)) == [8, 9, 10]
    assert seqs(store.read("a", before=5, limit=2)) == [3, 4]
    assert seqs(store.read("a", before=1)) == []
    assert seqs(store.read("a", before=100, limit=1)) == [10]
    assert seqs(store.read("b")) == [1, 2, 3]
    assert store.read("nowhere") == []


def test_read_with_after_returns_the_first_limit(make_store):
    """Paging forward: the oldest `limit` events above `after` (and below `before`)."""
    store = make_store()
    write(store, [chat("a", n) for n in range(1, 11)])
    assert seqs(store.read("a", after=4, limit=3)) == [5, 6, 7]
    assert seqs(store.read("a", after=8)) == [9, 10]
    assert seqs(store.read("a", after=10)) == []
    assert seqs(store.read("a", after=0, limit=200)) == list(range(1, 11))
    assert seqs(store.read("a", after=2, before=6)) == [3, 4, 5]
    assert seqs(store.read("a", after=2, before=6, limit=2)) == [3, 4]
    assert seqs(store.read("a", after=5, before=6)) == []


def test_last_seqs_is_the_highest_seq_per_room(make_store):
    """last_seqs() gives each room's highest seq, so the Registry continues from it."""
    store = make_store()
    write(store, [chat("a", 1), chat("b", 1), chat("a", 2), chat("a", 3)])
    assert store.last_seqs() == {"a": 3, "b": 1}


def test_retention_keeps_the_last_per_room_events(make_store):
    """Only the newest `per_room` events of each room are read back; seqs still continue."""
    store = make_store(per_room=5)
    write(store, [chat("a", n) for n in range(1, 13)] + [chat("b", n) for n in range(1, 4)])
    assert seqs(store.read("a", after=0, limit=100)) == [8, 9, 10, 11, 12]
    assert seqs(store.read("a", limit=100)) == [8, 9, 10, 11, 12]
    assert seqs(store.read("a", before=8)) == []
    assert seqs(store.read("b")) == [1, 2, 3]
    assert store.last_seqs() == {"a": 12, "b": 3}


def test_append_is_stored_or_reported_once_in_order(make_store):
    """Each event is stored at append (True) or handed to on_durable once, same object, in order."""
    store = make_store()
    events = [chat(f"r{n % 3}", n // 3 + 1) for n in range(3000)]
    durable = write(store, events)
    reported = durable.reported()
    assert len(reported) == len(durable.pending)
    assert all(a is b for a, b in zip(reported, durable.pending, strict=True))
    if make_store.kind == "sqlite":
        assert reported, "SqliteStore commits in the background"
        assert len(durable.batches) < len(events), "group commit: many events share one commit"


def test_reads_from_many_threads_while_writing(make_store):
    """Readers on other threads, beside the writer, always see a gapless run of committed seqs."""
    store = make_store()
    durable = Durable(store)
    failures = []

    def reader():
        for _ in range(100):
            got = seqs(store.read("a", limit=20))
            if got and got != list(range(got[0], got[0] + len(got))):
                failures.append(got)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    durable.write([chat("a", n) for n in range(1, 3001)])
    for thread in threads:
        thread.join()
    assert failures == []
    assert seqs(store.read("a", limit=3)) == [2998, 2999, 3000]


def test_reopening_continues_or_forgets(make_store):
    """SQLite keeps events, seqs and epoch across a reopen; memory starts over with a new epoch."""
    store = make_store()
    write(store, [chat("a", n) for n in range(1, 8)])
    epoch = store.epoch
    store.close()
    again = make_store()
    if make_store.kind == "memory":
        assert again.last_seqs() == {} and again.epoch != epoch
        return
    assert again.epoch == epoch
    assert again.last_seqs() == {"a": 7}
    assert seqs(again.read("a")) == list(range(1, 8))
    write(again, [chat("a", 8)])
    assert seqs(again.read("a", after=6)) == [7, 8]


def test_close_is_idempotent(make_store):
    """close() twice is harmless."""
    store = make_store()
    store.close()
    store.close()


# -- SQLite only ---------------------------------------------------------------------------------


def test_close_commits_and_reports_what_is_queued(tmp_path):
    """close() flushes the writer's queue: everything appended is reported and in the file."""
    store = SqliteStore(str(tmp_path / "h.db"))
    durable = Durable(store)
    events = [chat("a", n) for n in range(1, 2001)]
    for event in events:
        assert store.append(event) is False
    store.close()
    assert durable.reported() == events
    again = SqliteStore(str(tmp_path / "h.db"))
    try:
        assert again.last_seqs() == {"a": 2000}
    finally:
        again.close()


def test_append_after_close_is_refused(tmp_path):
    """An event appended after close() is neither stored nor reported."""
    store = SqliteStore(str(tmp_path / "h.db"))
    durable = Durable(store)
    store.close()
    assert store.append(chat("a", 1)) is False
    assert durable.reported() == []


def count_rows(path) -> dict:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT room, count(*) FROM events GROUP BY room"))


def test_writer_prunes_old_rows_from_the_file(tmp_path):
    """The writer deletes rows beyond the retention window from the file itself."""
    path = str(tmp_path / "h.db")
    store = SqliteStore(path, per_room=5, prune_interval=0)
    write(store, [chat("a", n) for n in range(1, 51)])
    assert seqs(store.read("a", after=0)) == [46, 47, 48, 49, 50]
    store.close()
    assert count_rows(path) == {"a": 5}


def test_smaller_retention_prunes_at_start(tmp_path):
    """Reopening with a smaller history_per_room prunes every room when the store opens."""
    path = str(tmp_path / "h.db")
    store = SqliteStore(path)
    write(store, [chat("a", n) for n in range(1, 21)] + [chat("b", n) for n in range(1, 3)])
    store.close()
    SqliteStore(path, per_room=3).close()
    assert count_rows(path) == {"a": 3, "b": 2}


def test_graceful_close_leaves_no_wal_file(tmp_path):
    """After close() the history is in the main file; the -wal and -shm files are gone."""
    path = tmp_path / "h.db"
    store = SqliteStore(str(path))
    write(store, [chat("a", 1)])
    assert (tmp_path / "h.db-wal").exists()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.db"]


def test_checkpoint_thread_moves_the_wal_into_the_file(tmp_path):
    """While the store runs, committed events reach the main file (SQLite's own checkpoint is off)."""
    path = tmp_path / "h.db"
    store = SqliteStore(str(path), checkpoint_interval=0.05)
    try:
        empty = path.stat().st_size
        write(store, [chat("a", n, "x" * 200) for n in range(1, 2001)])
        wait_for(lambda: path.stat().st_size > empty + 200 * 2000)
    finally:
        store.close()


def test_open_store_picks_the_store_from_config(tmp_path):
    """':memory:' gives a MemoryStore; a path gives a SqliteStore at that absolute path."""
    assert isinstance(open_store(Config(db=":memory:")), MemoryStore)
    store = open_store(Config(db=str(tmp_path / "x.db"), history_per_room=7))
    try:
        assert isinstance(store, SqliteStore)
        assert store.location == str(tmp_path / "x.db")
    finally:
        store.close()


def test_default_db_is_roomchat_db():
    """The default history is the file roomchat.db in the working directory."""
    assert Config().db == "roomchat.db"


# -- files that cannot be used: one clear StoreError -------------------------------------------


def malformed_pages(path) -> None:
    """A real roomchat history whose middle pages are overwritten with garbage."""
    store = SqliteStore(str(path))
    write(store, [chat(f"r{n % 4}", n // 4 + 1, "some text " * 10) for n in range(4000)])
    store.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)


def foreign_sqlite(path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda p: p.write_bytes(b"this is not a database, just some text\n" * 100), "file is not a database"),
        (lambda p: p.write_bytes(os.urandom(8192)), "file is not a database"),
        (malformed_pages, "malformed"),
        (foreign_sqlite, "not a roomchat history"),
        (lambda p: p.mkdir(), "Is a directory"),
    ],
    ids=["text", "random", "malformed", "foreign", "directory"],
)
def test_unusable_file_raises_store_error(tmp_path, prepare, reason):
    """A corrupt, foreign or non-file path raises StoreError with one line naming path and reason."""
    path = tmp_path / "h.db"
    prepare(path)
    with pytest.raises(StoreError) as info:
        SqliteStore(str(path))
    message = str(info.value)
    assert reason in message and str(path) in message and "\n" not in message


def test_missing_directory_raises_store_error(tmp_path):
    """A path inside a regular file (or a missing directory) cannot be created."""
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError, match="Not a directory"):
        SqliteStore(str(tmp_path / "plain" / "h.db"))
    with pytest.raises(StoreError, match="No such file or directory"):
        SqliteStore(str(tmp_path / "missing" / "h.db"))


def test_second_store_on_one_file_is_refused(tmp_path):
    """While one store has the file open, another fails instead of reusing its seqs."""
    path = str(tmp_path / "h.db")
    store = SqliteStore(path)
    try:
        with pytest.raises(StoreError, match="in use by another roomchat process"):
            SqliteStore(path)
    finally:
        store.close()
    SqliteStore(path).close()  # free again once the first is closed


@pytest.mark.timeout(10)
def test_write_lock_held_elsewhere_fails_fast(tmp_path):
    """A write lock held by another connection makes opening fail within about a second."""
    path = str(tmp_path / "h.db")
    SqliteStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="database is locked"):
            SqliteStore(path)
        assert time.monotonic() - started < 3
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_bad_synchronous_mode_is_refused(tmp_path):
    """Only SQLite's synchronous levels are accepted."""
    with pytest.raises(ValueError):
        SqliteStore(str(tmp_path / "h.db"), synchronous="SOMETIMES")
