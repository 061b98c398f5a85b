"""The bytes of one connection: `SocketReader` reads them, `Outbox` and `Flusher` write them.

Reading: each connection's own thread reads through its SocketReader, which serves exact-size
reads to the frame parser and lines to the handshake, and keeps no buffer while the connection
is idle.

Writing: the hub fans a room's events out under its lock, on whichever thread the engine
delivers from (the SQLite writer, the Redis listener, or with the memory engine the publishing
connection's thread), so a send must never wait on a slow peer. `Outbox.put` writes straight to
the socket with MSG_DONTWAIT when nothing is queued (the common case: one syscall, no thread
switch); whatever the kernel does not take is queued, and one `Flusher` thread for the whole
server finishes those writes when epoll says the socket is writable. Bytes leave in the order
`put` was called. When others' traffic waiting passes its byte limit, the queue is dropped and
`on_overflow` is called: the peer is too slow to keep, and no other member waits for it. Replies
to the client's own requests never drop it: its requests wait.
"""

import contextlib
import logging
import select
import socket
import threading
import time
from collections import deque

from chatserver.wire import frames

log = logging.getLogger("roomchat.streams")


class SocketReader:
    """Exact-size reads and lines from a blocking socket, for the frame parser and the handshake.
    `recv(n)` is the socket's own, or tls.TlsSession.recv for plaintext from a TLS connection.

    One `recv` often brings several frames; they are sliced from the same bytes object. Between
    messages an idle connection keeps no buffer at all. Used by its connection's thread only;
    `received` (bytes so far, for metrics) may be read from any thread.
    """

    __slots__ = ("_buf", "_pos", "_recv", "received")
    RECV_SIZE = 65536  # when a message is under way: take whatever has arrived in one call
    IDLE_RECV_SIZE = 1024  # when waiting for the next message: recv() allocates this much while it blocks

    def __init__(self, recv):
        self._recv = recv
        self._buf = b""
        self._pos = 0
        self.received = 0

    def read_exact(self, n: int) -> bytes:
        """Return exactly `n` bytes.

        Raises:
            EOFError: the peer closed the connection first.
            OSError: the socket failed or timed out (TimeoutError).
        """
        buf, pos = self._buf, self._pos
        end = pos + n
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        have = len(buf) - pos
        while have < n:
            chunk = self._recv(max(self.RECV_SIZE if have else self.IDLE_RECV_SIZE, n - have))
            if not chunk:
                raise EOFError
            self.received += len(chunk)
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buf, self._pos = data, n
        if n == len(data):  # nothing left over: drop the buffer rather than keep it while idle
            self._buf, self._pos = b"", 0
        return data[:n]

    def frame_ready(self) -> bool:
        """A whole frame is already buffered: the next frame read will not block (RFC 6455 5.2)."""
        return frames.frame_ready(self._buf, self._pos)

    def readline(self, limit: int) -> bytes:
        """A line ending in LF, or `limit` bytes if no LF comes first; b"" at EOF.

        Raises:
            OSError: the socket failed or timed out (TimeoutError).
        """
        while True:
            end = self._buf.find(b"\n", self._pos, self._pos + limit)
            if end >= 0 or len(self._buf) - self._pos >= limit:
                stop = end + 1 if end >= 0 else self._pos + limit
                line, self._pos = self._buf[self._pos : stop], stop
                return line
            chunk = self._recv(4096)
            if not chunk:
                line, self._buf, self._pos = self._buf[self._pos :], b"", 0
                return line
            self.received += len(chunk)
            self._buf = self._buf[self._pos :] + chunk
            self._pos = 0


class Outbox:
    """One connection's send queue: complete writes, in `put` order, never blocking the caller.

    Two budgets, because a client is answerable for its own requests but not for what others send
    it (the byte counts are taken when bytes are queued, whatever the queue held before):
    - traffic others cause (room events, DMs, `own=0`): once more than `limit_bytes` of it waits,
      the client is too slow to keep: the backlog is dropped, the close frame queued and
      `on_overflow` called;
    - replies to the client's own requests (`own`): never a reason to drop it. Instead its
      connection's thread calls `wait_for_room` before handling its next request, so the client
      cannot queue more than about `reply_budget` bytes of replies (plus one reply) by not reading.

    Any thread may call `put`/`put_last` (fan-out runs on the engine's delivering thread); the
    Flusher calls `flush`; the connection's own thread calls `wait_for_room`. `self._lock` guards
    the queue, the byte counts and the open/broken flags (`wait_for_room` first reads `_own`
    without it: one int, and a stale high value only sends it on to the locked wait), and is
    taken after the Registry's lock (lock order: registry -> outbox -> TLS session, connection
    state or housekeeper lock). Methods starting with `_` assume it is held. `sent` (bytes the
    kernel took, for metrics and for a waiting reader's progress) changes under it and may be
    read from any thread. `on_overflow()` runs with it held, on whatever thread was sending: it
    may take the connection's state lock and the housekeeper's lock, never this outbox's lock or
    the Registry's.
    """

    def __init__(self, sock: socket.socket, limit_bytes: int, flusher: "Flusher", on_overflow, overflow_frame=b"",
                 encrypt=None, reply_budget: int | None = None):
        self._sock = sock
        # TLS (tls.TlsSession.encrypt): frames become records when first sent, under our lock, so
        # records leave in the order they were made; a queued frame not yet sent is still plaintext
        # and may be dropped, a record (a memoryview in the queue) must be sent whole.
        self._encrypt = encrypt
        self._fd = sock.fileno()
        self._limit = limit_bytes
        self._reply_budget = limit_bytes if reply_budget is None else reply_budget
        self._flusher = flusher
        self._on_overflow = on_overflow  # called with the lock held: it must not call back into us
        self._overflow_frame = overflow_frame  # queued in place of the backlog when we give up
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # wait_for_room waits on it
        self._queue: deque = deque()  # [data, own bytes, others' bytes]: counts as queued
        self._own = 0  # bytes of replies to the client's own requests, queued
        self._others = 0  # bytes of traffic others caused, queued
        self._open = True  # False after close() or a failed write: later puts are dropped
        self._broken = False
        self.sent = 0  # bytes the kernel took: metrics, and progress a waiting reader can see

    @property
    def others_queued(self) -> int:
        """Bytes of others' traffic waiting (read without the lock: one int, a moment old)."""
        return self._others

    def put(self, data: bytes, own: int = 0) -> bool:
        """Queue `data` (bytes of whole frames) after everything put before it; `own` of its bytes
        answer the client's own requests (all of them: `len(data)`), the rest is others' traffic.

        Returns False when the outbox no longer sends: after `put_last`, a failed write or an
        overflow (then `data` is dropped). A socket error only closes the outbox.
        """
        with self._lock:
            if not self._open:
                return False
            return self._put(data, own)

    def put_last(self, data: bytes) -> None:
        """Queue a final frame (a close frame); nothing put later is sent. A no-op once closed,
        so a connection never sends two close frames (RFC 6455 5.5.1)."""
        with self._lock:
            if self._open:
                self._open = False
                self._put(data, len(data))
                self._room.notify_all()

    def _put(self, data: bytes, own: int) -> bool:
        assert self._lock.locked()
        if not self._queue:
            wire = data
            try:
                wire = self._encrypt(data) if self._encrypt else data
                sent = self._sock.send(wire, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:  # ssl.SSLError too
                self._fail()
                return False
            self.sent += sent
            if sent == len(wire):
                return True
            # a memoryview marks bytes that must go out whole: a frame half written, or TLS records
            data = memoryview(wire)[sent:] if sent or wire is not data else data
            own = max(0, len(data) - (len(wire) - own))  # what is left of it counts as others' first
            self._flusher.watch(self._fd, self)
        self._queue.append([data, own, len(data) - own])
        self._own += own
        self._others += len(data) - own
        if self._others > self._limit:
            self._overflow()
            return False
        return True

    def flush(self) -> None:
        """Called by the Flusher when the socket is writable: send what the kernel will take.
        A socket error closes the outbox."""
        with self._lock:
            while self._queue:
                entry = self._queue[0]
                data = entry[0]
                try:
                    if self._encrypt and not isinstance(data, memoryview):
                        entry[0] = data = memoryview(self._encrypt(data))
                    sent = self._sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                except OSError:
                    self._fail()
                    return
                self.sent += sent
                if sent < len(data):
                    entry[0] = memoryview(data)[sent:]
                    return
                self._queue.popleft()
                self._own -= entry[1]
                self._others -= entry[2]
                if entry[1] and self._own <= self._reply_budget:
                    self._room.notify_all()
            self._flusher.unwatch(self._fd, self)

    def write_direct(self, data: bytes) -> None:
        """Write `data` whole, blocking (the socket's timeout applies): for the handshake and plain
        HTTP answers, on the connection's thread before any frame can be queued (so no lock).
        Raises OSError if the socket fails."""
        self._sock.sendall(data)
        self.sent += len(data)

    def wait_for_room(self, timeout: float) -> bool:
        """On the connection's own thread, before it handles the client's next request: wait up to
        `timeout` seconds while more than `reply_budget` bytes of replies are queued. True once
        there is room (or the outbox stopped sending), False on timeout."""
        if self._own <= self._reply_budget:  # the usual case, read without the lock: one int,
            return True  # and a stale high value only takes the locked look below
        with self._lock:
            return self._room.wait_for(lambda: self._own <= self._reply_budget or not self._open, timeout)

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until everything queued is written (or cannot be);
        True if it was written."""
        deadline = time.monotonic() + timeout
        # Reads the deque without the lock: its length is one atomic read under the GIL, and a
        # stale answer costs one more 5 ms poll. Rare (closing only): polling is enough.
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue and not self._broken

    def detach(self) -> None:
        """Stop sending for good and drop the queue; called before the socket is closed."""
        with self._lock:
            self._open = False
            self._discard()

    def _overflow(self) -> None:
        """Too far behind: drop the backlog but finish a half-written frame, then the close
        frame, so the peer can still read why it is being dropped."""
        assert self._lock.locked()
        head = self._queue[0]
        self._queue.clear()
        self._own = self._others = 0
        if isinstance(head[0], memoryview):
            self._queue.append(head)
            self._own, self._others = head[1], head[2]
        if self._overflow_frame:
            self._queue.append([self._overflow_frame, len(self._overflow_frame), 0])
            self._own += len(self._overflow_frame)
        self._open = False
        self._room.notify_all()
        self._on_overflow()

    def _fail(self) -> None:
        assert self._lock.locked()
        self._broken = True
        self._open = False
        self._discard()

    def _discard(self) -> None:
        assert self._lock.locked()
        if self._queue:
            self._flusher.unwatch(self._fd, self)
        self._queue.clear()
        self._own = self._others = 0
        self._room.notify_all()


class Flusher(threading.Thread):
    """One thread for the whole server that finishes writes the kernel could not take at once.

    `watch`/`unwatch` are called by outboxes with their own lock held; `run` reads `_outboxes`
    with no lock. Each dict operation is atomic under the GIL, and a lookup that races with an
    unwatch at worst flushes an outbox that has nothing left to send (flush takes its lock).
    """

    def __init__(self):
        super().__init__(name="roomchat-flusher", daemon=True)
        self._epoll = select.epoll()
        self._outboxes: dict[int, Outbox] = {}
        self._stopped = False

    def watch(self, fd: int, outbox: Outbox) -> None:
        """Call `outbox.flush()` whenever `fd` is writable, until `unwatch`."""
        self._outboxes[fd] = outbox
        try:
            self._epoll.register(fd, select.EPOLLOUT)
        except FileExistsError:
            self._epoll.modify(fd, select.EPOLLOUT)
        except OSError:
            self._outboxes.pop(fd, None)

    def unwatch(self, fd: int, outbox: Outbox) -> None:
        """Stop watching `fd` for `outbox`; a no-op if the fd now belongs to another connection."""
        if self._outboxes.get(fd) is outbox:
            del self._outboxes[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def run(self) -> None:
        """The thread's loop: wait for writable sockets (epoll, 0.5 s at a time) and flush them."""
        while not self._stopped:
            for fd, _events in self._epoll.poll(0.5):
                outbox = self._outboxes.get(fd)
                if outbox is not None:
                    try:
                        outbox.flush()
                    except Exception:  # a bug here must not stop every other connection's writes
                        log.exception("flush failed")

    def stop(self) -> None:
        """Ask the loop to end; it notices within 0.5 s."""
        self._stopped = True
