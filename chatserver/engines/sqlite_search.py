"""Search over the SQLite history: an FTS5 index of the chats' current texts (engines/sqlite.py uses it).

A chat stored is indexed a moment later, off the path of delivery (`Indexer`): the writer
commits and delivers a batch of chats first, and indexes what it stored in one transaction of
its own once INDEX_DELAY has passed, INDEX_BATCH chats wait, or a search asks. A search waits
until every chat delivered before it began is indexed (at most INDEX_WAIT). Per commit, the
index cost a chat of 50 members about as much as delivering it (FTS5 writes a segment per
transaction): S3's p99 doubled. A chat's later changes are kept by triggers on `events`, so
whatever writes a row keeps them right without knowing of it: edited (UPDATE of its text; a
delete sets the text to '', which takes it out), or pruned by retention and the quotas
(DELETE); a row not indexed yet is indexed as it is then, or not at all once gone. After a
crash the chats stored but not indexed are indexed when the file is opened again (`prepare`:
a clean close leaves the mark `search_clean`; without it, the open looks up every chat's id
once, so it takes longer the bigger the file, also on the first open of a file written before).
Two tables in the history file hold it, and the file's byte quota counts them like the rest
(engines/sqlite_quotas.py measures the pages in use):

- `search_ids`: one row per chat row, (room, seq) -> an integer id, the FTS row's rowid (`events`
  is clustered by (room, seq) and has no rowid of its own);
- `search`: an FTS5 table without content of its own (`content=''`: the texts stay in `events`
  only), columns `room` (one token: "x" and the room name's UTF-8 in hex, so a query is limited
  to one room by the index itself) and `text`, tokenized by unicode61 with diacritics removed:
  words are runs of letters and digits, compared case-folded (protocol.search_words does the
  same for the memory engine's scan).

A file written before search existed gets the index when it is opened (`prepare`, inside the
opening transaction): 4.4 s for 500,000 chats of ten words on a quiet 2-core machine (a 71 MB file,
which grew to 131 MB), 28 s for a million on a loaded one; a line in the log says so first.

A deleted chat's words leave the index's pages too (`purge_step`, a little at each retention
pass of the writer), not only its answers.

Queries never pass the user's text to FTS5 as syntax: each word of `q` (protocol.search_words)
becomes a quoted prefix term, and the terms are AND-ed with the room's token.
"""

import logging
import sqlite3
import threading
import time

log = logging.getLogger("roomchat.store")

_TOKEN = "'x' || hex({0}.room)"  # the room column's one token, from a row of `events`
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_ids (id INTEGER PRIMARY KEY, room TEXT NOT NULL, seq INTEGER NOT NULL,"
    " UNIQUE (room, seq))",
    "CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(room, text, content='',"
    " tokenize='unicode61 remove_diacritics 2')",
    # (A chat row stored is indexed by Indexer; the trigger that did it per commit goes.)
    "DROP TRIGGER IF EXISTS search_insert",
    # Its text changed (an edit, or '' for a delete): the old words out (FTS5 needs the exact
    # values it was given), the new ones in; a delete also asks for a purge (`purge_step`).
    "CREATE TRIGGER IF NOT EXISTS search_update AFTER UPDATE OF text ON events WHEN old.kind = 'chat' BEGIN"
    f" INSERT INTO search (search, rowid, room, text) SELECT 'delete', id, {_TOKEN.format('old')}, old.text"
    "  FROM search_ids WHERE room = old.room AND seq = old.seq AND old.text != '';"
    f" INSERT INTO search (rowid, room, text) SELECT id, {_TOKEN.format('new')}, new.text FROM search_ids"
    "  WHERE room = new.room AND seq = new.seq AND new.text != '';"
    " INSERT OR REPLACE INTO meta (key, value) SELECT 'search_purge', '1' WHERE old.text != '' AND new.text = '';"
    " END",
    # Pruned: its words and its id go.
    "CREATE TRIGGER IF NOT EXISTS search_delete AFTER DELETE ON events WHEN old.kind = 'chat' BEGIN"
    f" INSERT INTO search (search, rowid, room, text) SELECT 'delete', id, {_TOKEN.format('old')}, old.text"
    "  FROM search_ids WHERE room = old.room AND seq = old.seq AND old.text != '';"
    " DELETE FROM search_ids WHERE room = old.room AND seq = old.seq;"
    " END",
)
# A stored chat's id (none once it is gone); then NEW_WORDS gives the new ids their words.
INDEX_ID = ("INSERT OR IGNORE INTO search_ids (room, seq) SELECT room, seq FROM events"
            " WHERE room = ? AND seq = ? AND kind = 'chat'")
TOP_ID = "SELECT ifnull(max(id), 0) FROM search_ids"
# Every chat without an id (a file from before search, or chats a crash left unindexed), in
# (room, seq) order; NEW_WORDS: the words of the ids above the highest before (none for an
# empty text: a deleted chat).
CATCH_UP_IDS = ("INSERT OR IGNORE INTO search_ids (room, seq) SELECT room, seq FROM events e WHERE kind = 'chat'"
                " AND NOT EXISTS (SELECT 1 FROM search_ids s WHERE s.room = e.room AND s.seq = e.seq)"
                " ORDER BY room, seq")
NEW_WORDS = (f"INSERT INTO search (rowid, room, text) SELECT i.id, {_TOKEN.format('e')}, e.text"
             " FROM search_ids i JOIN events e ON e.room = i.room AND e.seq = i.seq"
             " WHERE i.id > ? AND e.kind = 'chat' AND e.text != ''")
INDEX_DELAY = 0.25  # seconds a stored chat waits for the index at most, unless a search asks
INDEX_BATCH = 1000  # chats waiting that make the writer index them at once
INDEX_WAIT = 2.0  # seconds a search waits for the chats delivered before it to be indexed, at most
INDEX_RETRY_MAX = 30.0  # seconds between tries at most while indexing fails (the first after 1 s)
INDEX_PENDING_MAX = 100_000  # chats kept to index while it fails; past it they wait for the next open
# The newest matches below `before`, within the room's retention window (as reads apply it).
# The index drives (CROSS JOIN keeps SQLite from starting at the room's ids and asking FTS5 once
# per id), newest first by rowid, so LIMIT stops it early: a room's ids rise with its seqs (its
# chats are inserted in seq order, and `prepare` numbers an older file's chats in seq order),
# so "seq < before" is "rowid below the id of the first chat at or after `before`".
QUERY = ("SELECT i.seq, e.sender, e.text, e.ts, e.kind, e.target, e.data"  # sqlite_file.history_item's columns
         " FROM search f CROSS JOIN search_ids i ON i.id = f.rowid"
         " CROSS JOIN events e ON e.room = i.room AND e.seq = i.seq"
         " WHERE search MATCH ?"
         " AND f.rowid < ifnull((SELECT id FROM search_ids WHERE room = ? AND seq >= ? ORDER BY seq LIMIT 1), ?)"
         " AND i.seq > ifnull((SELECT last_seq FROM rooms WHERE room = ?), 0) - ?"
         " ORDER BY f.rowid DESC LIMIT ?")


def prepare(conn: sqlite3.Connection) -> None:
    """Inside the opening transaction: create the index and its triggers; unless the file was
    closed clean (the mark `search_clean`, taken away now), index every chat that has no id yet:
    all of them in a file from before search, the last few after a crash. Raises sqlite3.Error
    (no FTS5 in this SQLite: a sqlite3.OperationalError "no such module: fts5")."""
    new = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'search_ids'").fetchone() is None
    for statement in SCHEMA:
        conn.execute(statement)
    clean = conn.execute("DELETE FROM meta WHERE key = 'search_clean'").rowcount > 0 and not new
    if clean or conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
        return
    if new:
        log.info("history: building the search index of the chats stored so far (about 10 s per million chats)")
    top = conn.execute(TOP_ID).fetchone()[0]
    if conn.execute(CATCH_UP_IDS).rowcount > 0:
        conn.execute(NEW_WORDS, (top,))
        if not new:
            log.warning("history: chats stored before the last stop but not yet searchable are indexed now")


def mark_clean(conn: sqlite3.Connection) -> None:
    """After the writer's last index at close: every chat in the file is indexed."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('search_clean', '1')")


class Indexer:
    """The chats the writer stored and has not indexed yet, and who waits for them.

    While indexing fails (a full disk, a lock held by another program), it is tried again after
    1 s, then twice as long each time up to INDEX_RETRY_MAX, and searches do not wait for it;
    past INDEX_PENDING_MAX chats the oldest are left to the next open's catch-up (`prepare`:
    the file is not marked clean).

    Threads: the writer calls `stored` (before it delivers a batch), `timeout`, `due`, `index`
    and `failed`; a search calls `wait` from its own thread. `_cond` guards `_handed` (batches
    handed to the hub), `_done` (how many of them are indexed), `_wanted` and `_failing`;
    `_pending`, `_since`, `_retry_at`, `_backoff` and `lost` are the writer's alone."""

    def __init__(self, delay: float = INDEX_DELAY, batch: int = INDEX_BATCH):
        self._delay, self._batch = delay, batch
        self._pending: list = []  # (room, seq) of the chats stored, not indexed
        self._since: float | None = None  # time.monotonic() when the oldest of them was stored
        self._cond = threading.Condition()
        self._handed = self._done = 0
        self._wanted = False  # a search waits
        self._failing = False  # the last try failed: searches do not wait
        self._retry_at = 0.0  # time.monotonic() of the next try while failing
        self._backoff = 0.0
        self.lost = 0  # chats left to the next open's catch-up (INDEX_PENDING_MAX passed)

    def stored(self, batch: list) -> None:
        """A committed batch ([(room, event, Meta)]) about to be delivered."""
        chats = [(room, event["seq"]) for room, event, _meta in batch if event["type"] == "chat"]
        with self._cond:
            self._handed += 1
            if not chats and not self._pending:
                self._done = self._handed  # nothing of it to index
                return
        self._pending += chats
        if len(self._pending) > INDEX_PENDING_MAX:
            self.lost += len(self._pending) - INDEX_PENDING_MAX
            del self._pending[:-INDEX_PENDING_MAX]
        if self._since is None:
            self._since = time.monotonic()

    def timeout(self, longest: float) -> float:
        """How long the writer may wait for its queue: `longest`, or until the index is due."""
        if self._since is None:
            return longest
        at = self._retry_at if self._backoff else self._since + self._delay
        return max(0.0, min(longest, at - time.monotonic()))

    def due(self) -> bool:
        if not self._pending:
            return False
        now = time.monotonic()
        if self._backoff:
            return now >= self._retry_at
        with self._cond:
            wanted = self._wanted
        return wanted or len(self._pending) >= self._batch or now - self._since >= self._delay

    def failed(self) -> None:
        """The last `index` raised: try again later, and let searches go on meanwhile."""
        self._backoff = min(INDEX_RETRY_MAX, 2 * self._backoff or 1.0)
        self._retry_at = time.monotonic() + self._backoff
        with self._cond:
            self._failing, self._wanted = True, False
            self._cond.notify_all()

    def index(self, conn: sqlite3.Connection) -> None:
        """Index the chats pending, in one transaction of the writer's connection (it holds no
        other). Raises sqlite3.Error (rolled back; they stay pending)."""
        with self._cond:
            upto = self._handed
        if self._pending:
            conn.execute("BEGIN IMMEDIATE")
            try:
                top = conn.execute(TOP_ID).fetchone()[0]
                conn.executemany(INDEX_ID, self._pending)
                conn.execute(NEW_WORDS, (top,))  # the writer alone adds ids: those above `top` are these
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
            self._pending, self._since = [], None
        self._backoff = 0.0
        with self._cond:
            self._done, self._wanted, self._failing = upto, False, False
            self._cond.notify_all()

    def wait(self, wake) -> None:
        """A search: wait until every chat delivered before now is indexed (at most INDEX_WAIT);
        `wake()` gets the writer to index at once."""
        with self._cond:
            want = self._handed
            if self._done >= want or self._failing:
                return
            self._wanted = True
        wake()
        with self._cond:
            self._cond.wait_for(lambda: self._done >= want or self._failing, INDEX_WAIT)


def purge_step(conn: sqlite3.Connection, pages: int) -> bool:
    """On the writer thread, in its retention pass (a transaction): if a chat was deleted since
    the index was last purged, merge about `pages` pages of the index towards one segment. FTS5
    takes a deleted text's words out of the answers at once, but they stay in the index's older
    segments until those are merged; a full merge (FTS5's incremental 'optimize': 'merge' with a
    negative page count) writes them out for good. True while there is more to do.
    Raises sqlite3.Error."""
    if conn.execute("SELECT 1 FROM meta WHERE key = 'search_purge'").fetchone() is None:
        return False
    before = conn.total_changes
    conn.execute("INSERT INTO search (search, rank) VALUES ('merge', ?)", (-pages,))
    if conn.total_changes - before >= 2:  # FTS5: a merge that did work changes 2 rows or more
        return True
    conn.execute("DELETE FROM meta WHERE key = 'search_purge'")
    return False


def match_expression(room: str, words: list) -> str:
    """The FTS5 query for `words` (protocol.search_words: letters and digits only) in `room`:
    the room's token and each word as a quoted prefix term (a word of one character as a whole
    word: protocol.search_words says why), all AND-ed."""
    terms = [f'room:"x{room.encode().hex().upper()}"']
    terms += ['text:"' + word.replace('"', '""') + ('"*' if len(word) > 1 else '"') for word in words]
    return " AND ".join(terms)
