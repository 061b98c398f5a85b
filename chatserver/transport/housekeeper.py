"""The transport's record of live connections, and the thread that keeps their deadlines.

`Housekeeper` knows every connection from its first byte to its socket's close, and on its own
thread (`roomchat-housekeeper`) cuts handshakes past their deadline, cuts connections whose
close grace has run out, reports clients dropped for being too slow, closes sockets refused at
accept a moment after their 503, and asks each open connection to ping or give up on its peer.
Connections are duck-typed: `abort()`, `report_closed()`, `check_alive(now, ping_interval, ping_timeout)`,
`reader.received`, `outbox.sent`.

It also keeps the byte totals of connections gone and the count of slow-consumer drops, so that
`totals()` (for metrics) never goes backwards when a connection leaves the set. (A frame sent to
a connection after its thread untracked it, in its last moment, is not counted.)

`self._lock` guards the connection set, the deadlines, the pending aborts, the drops and the
totals; it is a leaf (taken last, nothing is called while it is held) and `_all_gone` waits on it.
"""

import threading
import time
from collections import deque

from chatserver.transport.caps import drain_and_close

REFUSED_LINGER = 0.5  # seconds a refused socket stays open after its 503, so the client reads it
MAX_REFUSED = 1024  # refused sockets lingering at once; more are closed at once


class Housekeeper(threading.Thread):
    """Connections and their deadlines; times in seconds."""

    def __init__(self, handshake_timeout: float, ping_interval: float, ping_timeout: float):
        super().__init__(name="roomchat-housekeeper", daemon=True)
        self.handshake_timeout = handshake_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._lock = threading.Lock()
        self._connections: set = set()
        self._handshaking: dict = {}  # conn -> deadline
        self._aborts: dict = {}  # conn -> when to cut it
        self._dropped: list = []  # too slow: report them closed before the cut
        self._gone = {"received": 0, "sent": 0, "slow_drops": 0}  # connections untracked, drops so far
        self._refused: deque = deque()  # (when to close, socket) of connections refused at accept
        self._all_gone = threading.Condition(self._lock)
        self._stop = threading.Event()

    def track(self, conn) -> None:
        """Count `conn` as live and start its handshake deadline."""
        with self._lock:
            self._connections.add(conn)
            self._handshaking[conn] = time.monotonic() + self.handshake_timeout

    def handshake_finished(self, conn) -> None:
        """Stop `conn`'s handshake deadline."""
        with self._lock:
            self._handshaking.pop(conn, None)

    def untrack(self, conn) -> None:
        """Forget `conn` (its socket is about to close); wake `wait_all_gone` after the last one."""
        with self._lock:
            if conn in self._connections:
                self._gone["received"] += conn.reader.received
                self._gone["sent"] += conn.outbox.sent
            self._connections.discard(conn)
            self._handshaking.pop(conn, None)
            self._aborts.pop(conn, None)
            if not self._connections:
                self._all_gone.notify_all()

    def abort_later(self, conn, delay: float, report_now: bool = False) -> None:
        """Cut `conn` after `delay` seconds; with `report_now` (a client dropped for being too slow,
        counted in `totals`), report it closed on the next tick (for callers that hold an outbox lock
        and so may not call the app)."""
        with self._lock:
            self._aborts[conn] = time.monotonic() + delay
            if report_now:
                self._dropped.append(conn)
                self._gone["slow_drops"] += 1

    def totals(self) -> dict:
        """{"received": bytes, "sent": bytes, "slow_drops": N} over every connection so far: what
        the live ones' SocketReader and Outbox counted plus what those gone had."""
        with self._lock:
            totals = dict(self._gone)
            for conn in self._connections:
                totals["received"] += conn.reader.received
                totals["sent"] += conn.outbox.sent
        return totals

    def close_later(self, sock) -> None:
        """Close a refused socket (its answer sent, its write side shut) after REFUSED_LINGER,
        reading what the client still sends first."""
        with self._lock:
            if len(self._refused) < MAX_REFUSED:
                self._refused.append((time.monotonic() + REFUSED_LINGER, sock))
                return
        drain_and_close(sock)

    def connections(self) -> list:
        """A snapshot of the live connections."""
        with self._lock:
            return list(self._connections)

    def wait_all_gone(self, timeout: float) -> list:
        """Wait up to `timeout` seconds for every connection to be untracked; return those left."""
        with self._lock:
            self._all_gone.wait_for(lambda: not self._connections, timeout)
            return list(self._connections)

    def run(self) -> None:
        """Every tick: cut handshakes past their deadline and connections due to be aborted,
        report clients dropped for being too slow; every few ticks: let each check its peer."""
        tick = min(0.1, self.ping_interval / 4, self.ping_timeout / 4)
        check_every = min(self.ping_interval, self.ping_timeout) / 4
        next_check = time.monotonic() + check_every
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [c for c, deadline in self._handshaking.items() if now > deadline]
                due = [c for c, when in self._aborts.items() if now >= when]
                for conn in due:
                    del self._aborts[conn]
                dropped, self._dropped = self._dropped, []
                conns = list(self._connections) if now >= next_check else ()
                refused = []
                while self._refused and self._refused[0][0] <= now:
                    refused.append(self._refused.popleft()[1])
            for sock in refused:
                drain_and_close(sock)
            for conn in dropped:
                conn.report_closed()  # presence `leave` now, though the socket lingers for the close frame
            for conn in late + due:
                conn.abort()
            if conns:
                next_check = now + check_every
                for conn in conns:
                    conn.check_alive(now, self.ping_interval, self.ping_timeout)

    def stop(self) -> None:
        """End the thread after its current tick; close refused sockets still lingering."""
        self._stop.set()
        with self._lock:
            refused, self._refused = self._refused, deque()
        for _when, sock in refused:
            drain_and_close(sock)
