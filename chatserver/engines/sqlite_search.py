"""Search over the SQLite history: an FTS5 index of the chats' current texts (engines/sqlite.py uses it).

The index is kept by triggers on `events`, so whatever writes a chat row keeps it right without
knowing of it: a chat stored (INSERT of a row with kind 'chat'), edited (UPDATE of its text; a
delete sets the text to '', which takes it out), or pruned by retention and the quotas (DELETE).
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

log = logging.getLogger("roomchat.store")

_TOKEN = "'x' || hex({0}.room)"  # the room column's one token, from a row of `events`
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS search_ids (id INTEGER PRIMARY KEY, room TEXT NOT NULL, seq INTEGER NOT NULL,"
    " UNIQUE (room, seq))",
    "CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(room, text, content='',"
    " tokenize='unicode61 remove_diacritics 2')",
    # A chat row stored: its id, then its words (none for an empty text: a deleted chat).
    "CREATE TRIGGER IF NOT EXISTS search_insert AFTER INSERT ON events WHEN new.kind = 'chat' BEGIN"
    " INSERT OR IGNORE INTO search_ids (room, seq) VALUES (new.room, new.seq);"
    f" INSERT INTO search (rowid, room, text) SELECT id, {_TOKEN.format('new')}, new.text FROM search_ids"
    "  WHERE room = new.room AND seq = new.seq AND new.text != '';"
    " END",
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
BACKFILL_IDS = ("INSERT OR IGNORE INTO search_ids (room, seq) SELECT room, seq FROM events WHERE kind = 'chat'"
                " ORDER BY room, seq")
BACKFILL_WORDS = (f"INSERT INTO search (rowid, room, text) SELECT i.id, {_TOKEN.format('e')}, e.text"
                  " FROM events e JOIN search_ids i ON i.room = e.room AND i.seq = e.seq"
                  " WHERE e.kind = 'chat' AND e.text != ''")
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
    """Inside the opening transaction: create the index and its triggers; a file that had chats
    but no index gets every chat indexed now. Raises sqlite3.Error (no FTS5 in this SQLite: a
    sqlite3.OperationalError "no such module: fts5")."""
    new = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'search_ids'").fetchone() is None
    for statement in SCHEMA:
        conn.execute(statement)
    if new and conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None:
        log.info("history: building the search index of the chats stored so far (about 10 s per million chats)")
        conn.execute(BACKFILL_IDS)
        conn.execute(BACKFILL_WORDS)


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
