"""The SQLite history file: its schema, its SQL, and opening it safely (engines/sqlite.py uses it).

One file holds a roomchat history: `meta` (epoch; `seq_floor`, see engines/sqlite_quotas.py), `rooms`
(the highest seq ever stored per room, which outlives pruning, so seqs are never reused),
`events` (chats in their current state, and the edit, delete and react events: `kind`, `target`,
`data`), with an index by time for the quotas' oldest-first pruning, one by target for a delete's
edits and a search index kept by triggers (engines/sqlite_search.py: `search_ids`, `search`), `rules` (topics, bans,
mutes, modes, invite uses and nicks reserved by tokens: engine.LocalRules's rows; expired ones are
deleted at start), `marks` and `dms` (read markers and DMs that wait, per identity:
engines/personal.py), and `notices`: the moderation events (topic, kick, ban, mute, mode) kept for
transcripts, each placed after the chat seq it followed (`after_seq`), with no seq of its own.
The file is created owner-only (0600): chats are private.
"""

import fcntl
import json
import os
import sqlite3
import time

import orjson

from chatserver.engines import sqlite_search
from chatserver.engines.base import EngineError, new_epoch
from chatserver.protocol import amend_event, chat_event


class StoreError(EngineError):
    """The history database cannot be used (missing directory, unwritable, corrupt, locked)."""


APPLICATION_ID = 0x52434854  # "RCHT" in the file header: this SQLite file is a roomchat history
SCHEMA_VERSION = 3  # PRAGMA user_version; 2 added events_by_ts and meta.seq_floor; 3 events.kind/target/data
OPEN_TIMEOUT = 1.0  # seconds start-up waits for a write lock held by another process before giving up
BUSY_TIMEOUT = 5.0  # seconds a running store waits for a lock before a commit counts as failed

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # Per room, the highest seq ever stored: it outlives pruning, so a seq is never reused.
    "CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID",
    # Clustered by (room, seq): a room's events are contiguous, appends go to the end of its range.
    # `kind`: the stored event's type (chat, edit, delete, react); `target`: the seq of the chat an
    # edit, delete or react is about (NULL for a chat); `data`: a JSON object of what else the
    # event or the chat's current state holds (NULL when nothing). EVENT_COLUMNS adds them to older files.
    "CREATE TABLE IF NOT EXISTS events (room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,"
    " text TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL DEFAULT 'chat', target INTEGER, data TEXT,"
    " PRIMARY KEY (room, seq)) WITHOUT ROWID",
    # Added after schema 1 was released, without a new version: older roomchats ignore the table.
    "CREATE TABLE IF NOT EXISTS rules (scope TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,"
    " value TEXT NOT NULL, until REAL, PRIMARY KEY (scope, kind, key)) WITHOUT ROWID",
    # Moderation events for transcripts; older roomchats ignore the table, so the version stays.
    "CREATE TABLE IF NOT EXISTS notices (room TEXT NOT NULL, after_seq INTEGER NOT NULL, ts REAL NOT NULL,"
    " event TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS notices_by_room ON notices (room, after_seq)",
    # The quotas prune oldest first (engines/sqlite_quotas.py); built once when a version 1 file is opened.
    "CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts)",
    # Read markers and DMs that wait, per identity (engines/personal.py); older roomchats ignore
    # both tables, so the version stays. `at`: when the mark was set (the oldest goes past MAX_MARKS).
    "CREATE TABLE IF NOT EXISTS marks (identity TEXT NOT NULL, room TEXT NOT NULL, seq INTEGER NOT NULL,"
    " at REAL NOT NULL, PRIMARY KEY (identity, room)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dms (n INTEGER PRIMARY KEY, identity TEXT NOT NULL, event TEXT NOT NULL)",
)
EVENT_COLUMNS = ("kind TEXT NOT NULL DEFAULT 'chat'", "target INTEGER", "data TEXT")  # added in schema 3
# The edits of a chat, found when it is deleted (their texts go too); only rows with a target are in it.
# Made after EVENT_COLUMNS are there; older roomchats ignore it.
EVENTS_BY_TARGET = "CREATE INDEX IF NOT EXISTS events_by_target ON events (room, target) WHERE target IS NOT NULL"
SAVE_RULE = (
    "INSERT INTO rules (scope, kind, key, value, until) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (scope, kind, key) DO UPDATE SET value = excluded.value, until = excluded.until"
)
DELETE_RULE = "DELETE FROM rules WHERE scope = ? AND kind = ? AND key = ?"
READ_RULES = "SELECT scope, kind, key, value, until FROM rules"
SAVE_MARK = (
    "INSERT INTO marks (identity, room, seq, at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (identity, room) DO UPDATE SET seq = max(seq, excluded.seq), at = excluded.at"
)
FORGET_MARK = "DELETE FROM marks WHERE identity = ? AND room = ?"
READ_MARKS = "SELECT identity, room, seq FROM marks ORDER BY at"
SAVE_DM = "INSERT INTO dms (n, identity, event) VALUES (?, ?, ?)"
DROP_DMS = "DELETE FROM dms WHERE identity = ? AND n <= ?"
READ_DMS = "SELECT identity, n, event FROM dms ORDER BY n"
INSERT_EVENT = "INSERT INTO events (room, seq, sender, text, ts) VALUES (?, ?, ?, ?, ?)"
# Edit, delete and react (engines/sqlite.py `_amend`): the event's row, and the chat it changes.
INSERT_AMEND = "INSERT INTO events (room, seq, sender, text, ts, kind, target, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
READ_TARGET = "SELECT sender, text, ts, data FROM events WHERE room = ? AND seq = ? AND kind = 'chat'"
UPDATE_CHAT = "UPDATE events SET text = ?, data = ? WHERE room = ? AND seq = ?"
CLEAR_EDITS = "UPDATE events SET text = '' WHERE room = ? AND target = ? AND kind = 'edit'"
SET_LAST_SEQ = (
    "INSERT INTO rooms (room, last_seq) VALUES (?, ?)"
    " ON CONFLICT (room) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)"
)
INSERT_NOTICE = "INSERT INTO notices (room, after_seq, ts, event) VALUES (?, ?, ?, ?)"
# A room's notices go with the chats they followed (in the same retention pass).
PRUNE_NOTICES = "DELETE FROM notices WHERE room = ? AND after_seq <= (SELECT last_seq FROM rooms WHERE room = ?) - ?"
_COLUMNS = "seq, sender, text, ts, kind, target, data"  # what history_item() takes
TRANSCRIPT_CHATS = "SELECT seq, sender, text, ts FROM events WHERE room = ? AND ts >= ? ORDER BY seq"
# From schema 3: chats only, in their current state (history_item: text, `edited`, `reactions`),
# as `history` sends them; deleted ones (text '') are gone.
TRANSCRIPT_CHATS_3 = (f"SELECT {_COLUMNS} FROM events WHERE room = ? AND ts >= ? AND kind = 'chat'"
                      " AND text != '' ORDER BY seq")
TRANSCRIPT_NOTICES = "SELECT after_seq, ts, event FROM notices WHERE room = ? AND ts >= ? ORDER BY rowid"
PRUNE_ROOM = "DELETE FROM events WHERE room = ? AND seq <= (SELECT last_seq FROM rooms WHERE room = ?) - ?"
# Reads apply the retention window themselves, so pruning can lag behind without showing.
_WINDOW = "room = ? AND seq > max(?, ifnull((SELECT last_seq FROM rooms WHERE room = ?), 0) - ?) AND seq < ?"
READ_FORWARD = f"SELECT {_COLUMNS} FROM events WHERE {_WINDOW} ORDER BY seq LIMIT ?"
READ_BACK = f"SELECT {_COLUMNS} FROM events WHERE {_WINDOW} ORDER BY seq DESC LIMIT ?"


def open_history(path: str, synchronous: str, busy_timeout: float, wal_keep: int) -> tuple:
    """Lock the file (flock, for the engine's lifetime), check it and create the schema.
    `wal_keep`: bytes the WAL file is cut back to when SQLite restarts it (journal_size_limit).

    Returns (locked descriptor, the writer's connection, epoch). Raises StoreError with a
    one-line reason for the operator."""
    where = f"history database {path}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # chats are private
    except OSError as exc:
        raise StoreError(f"cannot open {where}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(
            f"{where} is in use by another roomchat process; is one already running? "
            "Stop it, or start this one with --db OTHER.db (and --port OTHER_PORT)"
        ) from None
    conn = None
    try:
        conn = connect(path, OPEN_TIMEOUT)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"cannot switch {where} to WAL mode (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # A deleted chat's text (and a pruned event's) is overwritten in the page it leaves, not
        # left in free space: FAST does it where that costs no extra I/O (SQLite 3.20+).
        conn.execute("PRAGMA secure_delete = FAST")
        conn.execute("BEGIN IMMEDIATE")  # fails fast when another process holds the write lock
        epoch = _prepare(conn, where)
        conn.execute("COMMIT")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpoint thread does it
        conn.execute(f"PRAGMA journal_size_limit = {int(wal_keep)}")  # shrink the WAL after a burst
    except (sqlite3.Error, StoreError) as exc:
        if conn is not None:
            conn.close()
        os.close(fd)  # after conn.close(): closing any descriptor of the file drops SQLite's locks
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot use {where}: {first_line(exc)}") from None
    return fd, conn, epoch

def _prepare(conn: sqlite3.Connection, where: str) -> str:
    """Inside the opening transaction: check the file is ours and sound, create what is
    missing, prove we can write. Returns the epoch. (Retention runs later, on the writer
    thread, so that a file with many rooms opens fast.)"""
    objects = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    if objects and conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise StoreError(f"{where} is a SQLite file but not a roomchat history; choose another --db")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{where} was written by a newer roomchat (schema {version} > {SCHEMA_VERSION})")
    problems = conn.execute("PRAGMA quick_check").fetchall()  # reads every page once
    if problems != [("ok",)]:
        raise StoreError(f"{where} is corrupt: {problems[0][0].splitlines()[0]}")
    for statement in SCHEMA:
        conn.execute(statement)
    have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    for column in EVENT_COLUMNS:
        if column.split()[0] not in have:  # a schema 1 or 2 file: its rows are all chats
            conn.execute(f"ALTER TABLE events ADD COLUMN {column}")
    conn.execute(EVENTS_BY_TARGET)
    sqlite_search.prepare(conn)  # the search index and its triggers (built now for an older file)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (new_epoch(),))
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)", (str(time.time()),))
    conn.execute("DELETE FROM rules WHERE until <= ?", (time.time(),))
    return conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]

def history_item(room: str, seq: int, sender: str, text: str, ts: float, kind: str, target: int | None,
                 data: str | None) -> dict:
    """One `events` row (`_COLUMNS`) as a history item: a chat in its current state (`data`:
    its `edited`, `reactions` or `deleted`), or an edit (no text once its chat is deleted: ''),
    delete or react (`data`: its `emoji` and `on`) event."""
    extra = orjson.loads(data) if data else {}
    if kind == "chat":
        if extra.get("deleted"):
            return {"type": "chat", "room": room, "from": sender, "seq": seq, "ts": ts, "deleted": True}
        return {**chat_event(room, sender, text, seq, ts), **extra}
    fields = {"text": text} if kind == "edit" and text else extra
    return amend_event(kind, room, target, sender, seq, ts, **fields)


def chat_data(chat: dict) -> str | None:
    """What the `data` column keeps of a chat's state (history_item's inverse), or None."""
    kept = {key: chat[key] for key in ("edited", "reactions", "deleted") if key in chat}
    return orjson.dumps(kept).decode() if kept else None


def read_transcript(conn: sqlite3.Connection, room: str, since: float) -> list:
    """The room's stored chats, in their current state (`edited`, `reactions`, as history items
    carry them), and moderation events from `since` (Unix time), in stream order (a file without
    `notices`, written by an older roomchat, gives its chats). Raises sqlite3.Error."""
    from chatserver.engines.base import transcript_order

    if any(row[1] == "kind" for row in conn.execute("PRAGMA table_info(events)")):
        chats = [history_item(room, *row) for row in conn.execute(TRANSCRIPT_CHATS_3, (room, since))]
    else:  # schema 1 or 2: every row is a chat as it was sent
        chats = [chat_event(room, sender, text, seq, ts)
                 for seq, sender, text, ts in conn.execute(TRANSCRIPT_CHATS, (room, since))]
    has_notices = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'notices'").fetchone()
    rows = conn.execute(TRANSCRIPT_NOTICES, (room, since)) if has_notices else ()
    notices = [(at, {**json.loads(event), "ts": ts}) for at, ts, event in rows]
    return transcript_order(chats, notices)


def transcript_of_file(path: str, room: str, since: float) -> list:
    """`read_transcript` from a history file another process may be writing, read-only (WAL
    lets it read beside the writer). Raises StoreError when the file is missing, not a roomchat
    history, or cannot be read."""
    if not os.path.exists(path):
        raise StoreError(f"no history database at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise StoreError(f"{path} is not a roomchat history")
            return read_transcript(conn, room, since)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read history database {path}: {exc}") from None


def first_line(exc: Exception) -> str:
    """An exception's message in one line, for the operator (its type's name when it has none)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def connect(path: str, timeout: float) -> sqlite3.Connection:
    """A connection any thread may use; isolation_level=None: no implicit transactions, the
    writer says BEGIN and COMMIT itself."""
    return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
