"""Quotas on the whole SQLite history: bytes, age and rooms kept (engines/sqlite.py runs them).

`history_per_room` bounds each room; these bound the file: `--history-max-bytes` (the file and
its WAL together, see below), `--history-max-age` (seconds since an event was
stored) and `--history-max-rooms` (rooms with history). Past one, events go oldest first (by
`ts`, through the `events_by_ts` index); each room loses a prefix of its events, never one
from the middle, so what is left of a room is still one run of seqs. Past the room quota, the
rooms quiet longest go first, whole.

A room left with no event is forgotten: its `rooms` row goes, so neither the file nor the
server's memory keeps every room ever used. Its seqs must never be reused (a client may resume
it with `after`), so the file keeps one number instead: `meta.seq_floor`, the highest last seq
of any forgotten room. A room the file does not know starts at seq_floor + 1, above every seq a
forgotten room ever had. A room with members now is never forgotten (its members would see the
seq jump); `is_live(room)` says which.

The byte quota counts the WAL: `wal_max` of it (an eighth of the quota, between WAL_MIN and
WAL_MAX, at most half) is the WAL's, which the engine checkpoints back to empty before it grows past that
(engines/sqlite.py), and the rest is for the pages the file uses (page_count less
freelist_count; free pages are reused before the file grows). So file + WAL stay within the
quota, give or take what one commit and one pruning pass write.

Runs on the writer thread, on the writer's connection, between commits, one bounded chunk of
work per pass (CHUNK events, FORGET_CHUNK rooms), so a large backlog is worked off over several
passes and never stalls chats for long.
"""

import sqlite3
import time

CHUNK = 2000  # oldest events deleted per step, at most
PROBE = 10  # events deleted first against the byte quota, to learn what one takes in the file
STEPS = 10  # steps per pass, at most
FORGET_CHUNK = 5000  # rooms forgotten per pass, at most
WAL_MAX = 16 * 2**20  # bytes the WAL may reach before it is checkpointed back to empty, at most
WAL_MIN = 256 * 2**10  # ... and at least (a smaller WAL would mean a checkpoint every few commits)

OLDEST = "SELECT room, seq FROM events WHERE ts < ? ORDER BY ts LIMIT ?"
DELETE_PREFIX = "DELETE FROM events WHERE room = ? AND seq <= ?"
DELETE_ROOM_EVENTS = "DELETE FROM events WHERE room = ?"
HAS_EVENTS = "SELECT 1 FROM events WHERE room = ? LIMIT 1"
LAST_TS = "SELECT ts FROM events WHERE room = ? ORDER BY seq DESC LIMIT 1"
LAST_TS_ALL = ("SELECT room, (SELECT ts FROM events e WHERE e.room = r.room ORDER BY seq DESC LIMIT 1)"
               " FROM rooms r")
FORGET_ROOM = "DELETE FROM rooms WHERE room = ? AND last_seq = ?"
SET_FLOOR = ("INSERT INTO meta (key, value) VALUES ('seq_floor', ?)"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value")


def seq_floor(conn: sqlite3.Connection) -> int:
    """The file's seq floor (0 when no room was ever forgotten). Raises sqlite3.Error."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'seq_floor'").fetchone()
    return int(row[0]) if row else 0


class HistoryQuotas:
    """The three quotas (0: none) and one pass of pruning against them."""

    def __init__(self, max_bytes: int = 0, max_age: float = 0, max_rooms: int = 0):
        self.max_bytes = max_bytes
        # The WAL's share of max_bytes (WAL_MAX without a byte quota), and the pages' share.
        self.wal_max = min(WAL_MAX, max(WAL_MIN, max_bytes // 8), max_bytes // 2) if max_bytes else WAL_MAX
        self.max_page_bytes = max(0, max_bytes - self.wal_max)
        self.max_age = max_age
        self.max_rooms = max_rooms
        self._quiet: list = []  # (newest ts, room), quietest last: what the room quota takes next
        self._waiting: set = set()  # rooms left empty while someone was in them: forgotten later

    def __bool__(self) -> bool:
        return bool(self.max_bytes or self.max_age or self.max_rooms)

    def prune(self, conn: sqlite3.Connection, last_seqs: dict, is_live, floor: int) -> tuple[dict, int]:
        """One pass inside the caller's transaction. `last_seqs`: room -> last committed seq.
        Returns ({forgotten room: its last seq}, the new floor). Raises sqlite3.Error."""
        touched: set[str] = set()
        if self.max_age:
            cutoff = time.time() - self.max_age
            for _ in range(STEPS):
                if not self._drop_oldest(conn, cutoff, CHUNK, touched):
                    break
        if self.max_bytes:
            self._shrink(conn, touched)
        doomed = self._quietest(conn, last_seqs, is_live) if self.max_rooms else []
        for room in doomed:
            conn.execute(DELETE_ROOM_EVENTS, (room,))
        maybe = touched | self._waiting
        emptied = {r for r in maybe if r in last_seqs and not conn.execute(HAS_EVENTS, (r,)).fetchone()}
        forgotten, self._waiting = {}, set()
        for room in sorted(set(doomed) | emptied):
            if is_live(room) or len(forgotten) >= FORGET_CHUNK:
                self._waiting.add(room)
            else:
                conn.execute(FORGET_ROOM, (room, last_seqs[room]))
                forgotten[room] = last_seqs[room]
        if forgotten:
            floor = max(floor, *forgotten.values())
            conn.execute(SET_FLOOR, (str(floor),))
        return forgotten, floor

    def _shrink(self, conn: sqlite3.Connection, touched: set) -> None:
        """Delete oldest events until the file's used pages fit max_page_bytes (STEPS steps at most):
        a probe first, to learn how many bytes an event frees (small, so a small quota is not
        emptied by it; four times larger while it frees no whole page), then about as many as
        needed."""
        per_event = None
        probe = PROBE
        for _ in range(STEPS):
            used = self._used_bytes(conn)
            excess = used - self.max_page_bytes
            if excess <= 0:
                return
            count = probe if per_event is None else min(CHUNK, int(excess / per_event) + 1)
            dropped = self._drop_oldest(conn, float("inf"), count, touched)
            if not dropped:
                return
            freed = used - self._used_bytes(conn)
            if freed > 0:
                per_event = freed / dropped
            else:
                probe = min(CHUNK, probe * 4)

    def _drop_oldest(self, conn: sqlite3.Connection, cutoff: float, count: int, touched: set) -> int:
        """Delete the `count` oldest events stored before `cutoff` (each room's prefix up to
        them); returns how many there were."""
        upto: dict[str, int] = {}
        rows = conn.execute(OLDEST, (cutoff, count)).fetchall()
        for room, seq in rows:
            upto[room] = max(seq, upto.get(room, 0))
        conn.executemany(DELETE_PREFIX, upto.items())
        touched.update(upto)
        return len(rows)

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]

    def _quietest(self, conn: sqlite3.Connection, last_seqs: dict, is_live) -> list:
        """Rooms over the room quota (at most FORGET_CHUNK), quiet longest first; a room with no
        event is quietest. One statement looks up every room's newest event; the order found is
        kept for the next passes while a backlog of rooms is worked off."""
        excess = min(len(last_seqs) - self.max_rooms, FORGET_CHUNK)
        if excess <= 0:
            self._quiet = []
            return []
        if not self._quiet:
            self._quiet = sorted(((ts or 0.0, room) for room, ts in conn.execute(LAST_TS_ALL)), reverse=True)
        doomed = []
        while self._quiet and len(doomed) < excess:
            ts, room = self._quiet.pop()
            newest = conn.execute(LAST_TS, (room,)).fetchone()
            if room in last_seqs and (newest[0] if newest else 0.0) <= ts and not is_live(room):
                doomed.append(room)  # (one written to since the list was made waits for the next list)
        return doomed
