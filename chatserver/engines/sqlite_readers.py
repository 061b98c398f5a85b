"""A fixed pool of read-only SQLite connections for history reads (engines/sqlite.py uses it).

Threads are per client, so a connection per reading thread would mean one per client at once:
600 clients asking for history together opened 600 connections (three descriptors each, and
their page caches). The pool holds at most `size` connections; a read that finds them all busy
waits its turn (up to `wait` seconds, then `PoolBusy`), and connections nobody has used for
`idle_timeout` seconds are closed (`close_idle`, called by the engine's checkpoint thread), so a
burst leaves nothing behind. WAL mode lets every reader run beside the writer.

A checkpoint that empties the WAL must wait for every reader of an older snapshot, and readers
that keep overlapping (two of them reading in turn) can make it wait forever: `paused()` lends
nothing while the engine checkpoints, once the lent connections are back.

`_cond` (a leaf) guards the idle list, the count of open connections and `_paused`; SQLite is
never called while it is held.
"""

import contextlib
import sqlite3
import threading
import time

# Connections reading at once: few, as reads are CPU-bound and the server has few cores, yet one
# for each of the registry's REPLY_BUILDERS (4) and SEARCHERS (2), so a search never keeps a
# join or history read waiting for a reader (tests/unit/test_sqlite_readers.py pins it).
POOL_SIZE = 6
IDLE_TIMEOUT = 10.0  # seconds an unused connection stays open
READ_WAIT = 10.0  # seconds a read waits for a free connection before it is refused


class PoolBusy(Exception):
    """Every connection stayed busy for the whole wait (or the pool is closed)."""


class ReaderPool:
    """At most `size` connections made by `connect()`, shared by every thread that reads."""

    def __init__(self, connect, size: int = POOL_SIZE, idle_timeout: float = IDLE_TIMEOUT,
                 wait: float = READ_WAIT):
        self._connect = connect
        self._size = size
        self._idle_timeout = idle_timeout
        self._wait = wait
        self._cond = threading.Condition()
        self._idle: list[tuple[sqlite3.Connection, float]] = []  # (connection, idle since), last used last
        self._open = 0  # connections in existence, idle or lent
        self._paused = False  # while True, nothing is lent (paused())
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use."""
        return self._open

    @contextlib.contextmanager
    def connection(self):
        """A connection for the `with` block, given back after it.

        Raises:
            PoolBusy: none came free within `wait` seconds, or the pool is closed.
            sqlite3.Error: a new connection could not be opened.
        """
        conn = self._borrow()
        try:
            yield conn
        finally:
            self._give_back(conn)

    def _borrow(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self._wait
        with self._cond:
            while True:
                if self._closed:
                    raise PoolBusy("the history store is closed")
                if self._idle and not self._paused:
                    return self._idle.pop()[0]
                if self._open < self._size and not self._paused:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise PoolBusy(f"all {self._size} history readers stayed busy for {self._wait:g} s")
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()
            raise

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append((conn, time.monotonic()))
                self._cond.notify_all()  # a borrower, and paused() waiting for the lent ones
                return
            self._open -= 1
        conn.close()

    @contextlib.contextmanager
    def paused(self, wait: float):
        """Lend no connection during the `with` block (borrowers wait, within their own `wait`),
        after waiting up to `wait` seconds for the lent ones to come back. Yields True when none
        is lent. One thread at a time."""
        with self._cond:
            self._paused = True
            deadline = time.monotonic() + wait
            while self._open > len(self._idle) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            idle = self._open == len(self._idle)
        try:
            yield idle
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def close_idle(self) -> int:
        """Close connections idle for longer than `idle_timeout`; returns how many."""
        cutoff = time.monotonic() - self._idle_timeout
        with self._cond:
            stale = [conn for conn, since in self._idle if since < cutoff]
            self._idle = [(conn, since) for conn, since in self._idle if since >= cutoff]
            self._open -= len(stale)
        for conn in stale:
            conn.close()
        return len(stale)

    def close(self) -> None:
        """Close idle connections now and lent ones as they come back; later reads get PoolBusy."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn, _since in idle:
            conn.close()
