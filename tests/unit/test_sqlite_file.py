"""SQLite history files that cannot be used, and the file's own rules: one clear StoreError each."""

import contextlib
import os
import re
import sqlite3
import time

import pytest

from chatserver.engines.sqlite import SqliteEngine, StoreError
from chatserver.engines.sqlite_file import read_transcript
from tests.helpers import chat, no_unclosed_resources, started, write


def malformed_pages(path) -> None:
    """A real roomchat history whose middle pages are overwritten with garbage."""
    store = started(SqliteEngine(str(path)))
    write(store, [chat(f"r{n % 4}", n // 4 + 1, "some text " * 10) for n in range(4000)])
    store.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)


def foreign_sqlite(path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE notes (body TEXT)")


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda p: p.write_bytes(b"this is not a database, just some text\n" * 100), "file is not a database"),
        (lambda p: p.write_bytes(os.urandom(8192)), "file is not a database"),
        (malformed_pages, "is corrupt|malformed"),  # found by quick_check, or by a read before it
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
        SqliteEngine(str(path))
    message = str(info.value)
    assert re.search(reason, message) and str(path) in message and "\n" not in message


def test_missing_directory_raises_store_error(tmp_path):
    """A path inside a regular file (or a missing directory) cannot be created."""
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError, match="Not a directory"):
        SqliteEngine(str(tmp_path / "plain" / "h.db"))
    with pytest.raises(StoreError, match="No such file or directory"):
        SqliteEngine(str(tmp_path / "missing" / "h.db"))


def test_second_store_on_one_file_is_refused(tmp_path):
    """While one store has the file open, another fails instead of reusing its seqs."""
    path = str(tmp_path / "h.db")
    store = SqliteEngine(path)
    try:
        with pytest.raises(StoreError, match="in use by another roomchat process"):
            SqliteEngine(path)
    finally:
        store.close()
    SqliteEngine(path).close()  # free again once the first is closed


def test_a_file_that_fails_to_load_is_left_closed_and_unlocked(tmp_path):
    """A row the engine cannot read at start (a waiting DM that is not JSON) raises StoreError with
    one line, and leaves no connection open and no lock held: the file opens again once mended."""
    path = str(tmp_path / "h.db")
    SqliteEngine(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO dms (n, identity, event) VALUES (1, 'ann', 'not json')")
    with no_unclosed_resources(), pytest.raises(StoreError, match=r"^cannot use history database .*h\.db: [^\n]+$"):
        SqliteEngine(path)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM dms")
    SqliteEngine(path).close()  # not "in use by another roomchat process"


@pytest.mark.timeout(10)
def test_write_lock_held_elsewhere_fails_fast(tmp_path):
    """A write lock held by another connection makes opening fail after OPEN_TIMEOUT (1 s), not
    after the running engine's busy timeout (here a minute)."""
    path = str(tmp_path / "h.db")
    SqliteEngine(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="database is locked"):
            SqliteEngine(path, busy_timeout=60)
        assert time.monotonic() - started < 30  # far below the busy timeout, whatever the machine
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_bad_synchronous_mode_is_refused(tmp_path):
    """Only SQLite's synchronous levels are accepted."""
    with pytest.raises(ValueError):
        SqliteEngine(str(tmp_path / "h.db"), synchronous="SOMETIMES")


def test_history_file_is_owner_only(tmp_path):
    """A new history file can be read by its owner only: chats are private."""
    path = tmp_path / "h.db"
    store = started(SqliteEngine(str(path)))
    write(store, [chat("a", 1)])
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "h.db-wal").stat().st_mode & 0o077 == 0
    store.close()


def test_a_schema_2_file_opens_with_its_chats_and_gains_the_event_columns(tmp_path):
    """A history written before schema 3 (events without kind, target, data) opens: its rows
    are read as chats, the columns are added, and the file says schema 3."""
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA application_id = 1380141140")
        conn.execute("PRAGMA user_version = 2")
        conn.execute("CREATE TABLE events (room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,"
                     " text TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID")
        conn.execute("CREATE TABLE rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("INSERT INTO events VALUES ('lobby', 1, 'ann', 'from before', 1e9)")
        conn.execute("INSERT INTO rooms VALUES ('lobby', 1)")
    engine = SqliteEngine(str(path))
    try:
        assert [(e["seq"], e["from"], e["text"]) for e in engine.read("lobby")] == [(1, "ann", "from before")]
    finally:
        engine.close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        assert columns[-3:] == ["kind", "target", "data"]
        assert conn.execute("SELECT kind FROM events").fetchall() == [("chat",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_transcript_of_a_file_from_before_edits_has_its_chats_as_sent():
    """A schema 2 file (no kind/target/data columns, no notices) gives its chats in the shape `history` has."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE events (room TEXT, seq INTEGER, sender TEXT, text TEXT, ts REAL)")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                         [("lobby", 2, "bob", "two", 20.0), ("lobby", 1, "ann", "one", 10.0),
                          ("x", 1, "cy", "no", 5.0)])
        assert read_transcript(conn, "lobby", 15.0) == [
            {"type": "chat", "room": "lobby", "from": "bob", "text": "two", "seq": 2, "ts": 20.0}]
