"""Per-connection send queues that never block the thread that fills them.

Fan-out runs on the sender's thread, under the Registry lock, so a send must never wait on a slow
peer. `Outbox.put` writes straight to the socket with MSG_DONTWAIT when nothing is queued (the
common case: one syscall, no thread switch); whatever the kernel does not take is queued, and one
`Flusher` thread for the whole server finishes those writes when epoll says the socket is
writable. Bytes leave in the order `put` was called. A queue over its byte limit is dropped and
`on_overflow` is called: the peer is too slow to keep, and no other member waits for it.
"""

import contextlib
import logging
import select
import socket
import threading
import time
from collections import deque

log = logging.getLogger("roomchat.outbox")


class Outbox:
    def __init__(self, sock: socket.socket, limit_bytes: int, flusher: "Flusher", on_overflow, overflow_frame=b""):
        self._sock = sock
        self._fd = sock.fileno()
        self._limit = limit_bytes
        self._flusher = flusher
        self._on_overflow = on_overflow  # called with the lock held: it must not call back into us
        self._overflow_frame = overflow_frame  # queued in place of the backlog when we give up
        self._lock = threading.Lock()
        self._queue: deque = deque()
        self._queued = 0
        self._open = True  # False after close() or a failed write: later puts are dropped
        self._broken = False

    def put(self, data: bytes) -> bool:
        """Queue `data` after everything put before it. False when the outbox no longer sends."""
        with self._lock:
            if not self._open:
                return False
            return self._put(data)

    def put_last(self, data: bytes) -> None:
        """Queue a final frame (a close frame); nothing put later is sent. A no-op once closed,
        so a connection never sends two close frames."""
        with self._lock:
            if self._open:
                self._open = False
                self._put(data)

    def _put(self, data: bytes) -> bool:
        if self._queue:
            self._queue.append(data)
            self._queued += len(data)
            if self._queued > self._limit:
                self._overflow()
                return False
            return True
        try:
            sent = self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail()
            return False
        if sent < len(data):
            rest = memoryview(data)[sent:] if sent else data  # a memoryview marks a frame half written
            self._queue.append(rest)
            self._queued = len(rest)
            self._flusher.watch(self._fd, self)
        return True

    def flush(self) -> None:
        """Called by the Flusher when the socket is writable: send what the kernel will take."""
        with self._lock:
            while self._queue:
                data = self._queue[0]
                try:
                    sent = self._sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                except OSError:
                    self._fail()
                    return
                self._queued -= sent
                if sent < len(data):
                    self._queue[0] = memoryview(data)[sent:]
                    return
                self._queue.popleft()
            self._flusher.unwatch(self._fd, self)

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued is written (or cannot be); True if it was written."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:  # rare (closing only): polling is enough
            time.sleep(0.005)
        return not self._queue and not self._broken

    def detach(self) -> None:
        """Stop sending for good; called before the socket is closed."""
        with self._lock:
            self._open = False
            self._discard()

    def _overflow(self) -> None:
        """Too far behind: drop the backlog but finish a half-written frame, then the close
        frame, so the peer can still read why it is being dropped."""
        head = self._queue[0]
        self._queue.clear()
        if isinstance(head, memoryview):
            self._queue.append(head)
        if self._overflow_frame:
            self._queue.append(self._overflow_frame)
        self._queued = sum(len(data) for data in self._queue)
        self._open = False
        self._on_overflow()

    def _fail(self) -> None:
        self._broken = True
        self._open = False
        self._discard()

    def _discard(self) -> None:
        if self._queue:
            self._flusher.unwatch(self._fd, self)
        self._queue.clear()
        self._queued = 0


class Flusher(threading.Thread):
    """One thread for the whole server that finishes writes the kernel could not take at once."""

    def __init__(self):
        super().__init__(name="roomchat-flusher", daemon=True)
        self._epoll = select.epoll()
        self._outboxes: dict[int, Outbox] = {}
        self._stopped = False

    def watch(self, fd: int, outbox: Outbox) -> None:
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
        while not self._stopped:
            for fd, _events in self._epoll.poll(0.5):
                outbox = self._outboxes.get(fd)
                if outbox is not None:
                    try:
                        outbox.flush()
                    except Exception:  # a bug here must not stop every other connection's writes
                        log.exception("flush failed")

    def stop(self) -> None:
        self._stopped = True
