"""Connection caps, and the accept loop at the edge of its resources.

`ConnectionCaps` counts live TCP connections, in all and per client address, against
`--max-connections` and `--max-connections-per-address`. `AcceptGate` is the part of the
transport (a mixin of transport.WebSocketTransport) that runs on the accept thread:

- over a cap, a new connection is refused at once, without a thread: `503 Service Unavailable`
  with `Retry-After` (on a TLS port, where HTTP cannot be spoken before a TLS handshake, it is
  only closed);
- when `accept()` fails for want of descriptors (EMFILE, ENFILE), socketserver's loop would spin
  on the ready listening socket at 100% of a core: we close a spare descriptor kept for this,
  accept the waiting client, answer it 503, take the spare back, and pause a moment;
- when a connection's thread cannot start, the client gets 503 instead of a traceback in the log.

Each kind of refusal is logged once per burst (`BurstLog`): the first line at once, then one line
with the count when the next burst starts.

The per-address cap counts by the client's address: the TCP peer, or, when that peer is a
trusted proxy (wire/proxies.py), the client it reports, which is only known once the request head is
read (then transport.Connection.handshake takes the count and answers 503 itself).

Threads and locks: `ConnectionCaps._lock` and `BurstLog._lock` are leaves; counts are taken on
the accept thread (or a connection's thread, behind a proxy) and given back on the connection's
thread as it ends.
"""

import contextlib
import errno
import logging
import os
import resource
import socket
import threading
import time

from chatserver.errors import HandshakeError
from chatserver.wire import handshake

log = logging.getLogger("roomchat.transport")

FD_HEADROOM = 64  # descriptors kept free of connections: SQLite readers and writer, epoll, logs, Redis
RETRY_AFTER = 5  # seconds, in the 503's Retry-After
BURST_QUIET = 10.0  # seconds without a refusal of a kind before its next one is logged again
DESCRIPTOR_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
MAX_BACKOFF = 0.5  # seconds the accept loop pauses, at most, when it is out of descriptors


def default_max_connections() -> int:
    """The global cap when none is set: the open-file limit (RLIMIT_NOFILE, soft) less headroom
    (FD_HEADROOM or an eighth of it, whichever is more)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - max(FD_HEADROOM, soft // 8))


class BurstLog:
    """Warnings that come in bursts (refusals), logged once per burst: the first of a kind at
    once, then nothing until `quiet` seconds have passed since the last one logged, when the next
    one is logged with the number left out meanwhile. Any thread."""

    def __init__(self, quiet: float = BURST_QUIET):
        self._quiet = quiet
        self._lock = threading.Lock()
        self._kinds: dict[str, list] = {}  # kind -> [time of the last line, refusals not logged since]

    def warn(self, kind: str, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._kinds.setdefault(kind, [-self._quiet, 0])
            if now - last[0] < self._quiet:
                last[1] += 1
                return
            left_out, last[:] = last[1], [now, 0]
        suffix = f" ({left_out} more since the last line like this)" if left_out else ""
        log.warning(message + suffix, *args)


class ConnectionCaps:
    """How many connections are live, in all and per address, against their caps (0: no cap)."""

    def __init__(self, max_total: int, per_address: int):
        self.max_total = max_total
        self.per_address = per_address
        self._lock = threading.Lock()
        self.total = 0
        self._by_address: dict[str, int] = {}

    def take(self, address: str | None) -> str | None:
        """Count a new connection (and one for `address`, unless None). Returns None when it is
        admitted, else the reason it is not (and nothing is counted)."""
        with self._lock:
            if self.max_total and self.total >= self.max_total:
                return f"the server is full ({self.max_total} connections); try again later"
            if address is not None and not self._take_address(address):
                return self._over(address)
            self.total += 1
            return None

    def take_address(self, address: str) -> None:
        """Count one more connection for `address` (a client behind a trusted proxy).

        Raises:
            HandshakeError: 503 with Retry-After when `address` is at its cap.
        """
        with self._lock:
            if not self._take_address(address):
                raise HandshakeError(503, self._over(address), {"Retry-After": str(RETRY_AFTER)})

    def give_back(self, address: str | None, total: bool = True) -> None:
        """Uncount a connection that ended: one for `address` (unless None), and one in all."""
        with self._lock:
            if total:
                self.total -= 1
            if address is not None:
                left = self._by_address.get(address, 0) - 1
                if left > 0:
                    self._by_address[address] = left
                else:
                    self._by_address.pop(address, None)

    def _take_address(self, address: str) -> bool:
        assert self._lock.locked()
        count = self._by_address.get(address, 0)
        if self.per_address and count >= self.per_address:
            return False
        self._by_address[address] = count + 1
        return True

    def _over(self, address: str) -> str:
        return f"too many connections from {address} ({self.per_address}); close one and try again"


class AcceptGate:
    """The accept thread's side of the transport (mixed into WebSocketTransport, a socketserver
    ThreadingMixIn + TCPServer): caps, descriptor exhaustion, threads that cannot start.
    Needs `self.caps`, `self.proxies`, `self.ssl_context` and `self.refusals` (a BurstLog)."""

    _spare_fd: int | None = None
    _backoff = 0.0

    def keep_spare_descriptor(self) -> None:
        """Hold one descriptor in reserve for answering clients when the limit is reached."""
        if self._spare_fd is None:
            with contextlib.suppress(OSError):
                self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def release_spare_descriptor(self) -> None:
        """Close the reserve descriptor."""
        spare, self._spare_fd = self._spare_fd, None
        if spare is not None:
            os.close(spare)

    def server_close(self) -> None:
        """socketserver's: close the listening socket, and the reserve descriptor with it."""
        super().server_close()
        self.release_spare_descriptor()

    # upstream (socketserver): accept() failing with EMFILE returns quietly, and the loop selects
    # the still-ready listening socket again at once: 100% of a core, new clients left hanging.
    # fix: answer the waiting client 503 with the spare descriptor, then pause a moment.
    # tests: test_budgets_caps.py::test_descriptor_limit_*
    def get_request(self):
        """socketserver's accept step. Raises OSError as accept() does (socketserver then skips
        this round); when descriptors ran out, only after answering and pausing."""
        try:
            request = self.socket.accept()
        except OSError as exc:
            if exc.errno not in DESCRIPTOR_ERRORS:
                raise
            self._out_of_descriptors(exc)
            raise
        self._backoff = 0.0
        return request

    def _out_of_descriptors(self, exc: OSError) -> None:
        self.refusals.warn("descriptors", "out of file descriptors (%s): new clients get 503 until some close",
                           os.strerror(exc.errno))
        if self._spare_fd is not None:
            self.release_spare_descriptor()
            try:
                sock, _address = self.socket.accept()
            except OSError:
                pass
            else:
                self._refuse(sock, "the server is out of file descriptors; try again later", linger=False)
            self.keep_spare_descriptor()
        self._backoff = min(MAX_BACKOFF, max(0.01, self._backoff * 2))
        time.sleep(self._backoff)

    # upstream (ThreadingMixIn.process_request): a thread per connection, no cap; a thread that
    # cannot start raises into handle_error, which logs a traceback per connection.
    # fix: the caps first (503 at once, no thread); a thread that cannot start is a 503 too.
    # tests: test_budgets_caps.py
    def process_request(self, request, client_address):
        """On the accept thread: admit the connection and start its thread, or refuse it."""
        peer = client_address[0]
        address = None if self.proxies.trusts(peer) else peer  # behind a proxy: counted after the head
        refused = self.caps.take(address)
        if refused is not None:
            self.refusals.warn("caps", "refusing connections: %s", refused)
            self._refuse(request, refused)
            return
        try:
            start_thread(self._serve_connection, (request, client_address, address))
        except RuntimeError as exc:  # "can't start new thread": out of memory or of threads
            self.caps.give_back(address)
            self.refusals.warn("threads", "cannot start a thread for a new connection (%s): answering 503", exc)
            self._refuse(request, "the server is busy; try again later")

    def _serve_connection(self, request, client_address, address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.caps.give_back(address)

    def _refuse(self, sock: socket.socket, reason: str, linger: bool = True) -> None:
        """503 with Retry-After, written without blocking, and the socket closed; on a TLS port
        only closed. `linger`: let the housekeeper close it a moment later, so the request the
        client is still sending does not turn our close into a reset that hides the answer."""
        with contextlib.suppress(OSError):
            if self.ssl_context is None:
                answer = handshake.refusal(HandshakeError(503, reason, {"Retry-After": str(RETRY_AFTER)}))
                sock.send(answer, socket.MSG_DONTWAIT)
                sock.shutdown(socket.SHUT_WR)
        if linger and self.ssl_context is None:
            self.housekeeper.close_later(sock)
        else:
            drain_and_close(sock)


def start_thread(target, args: tuple) -> None:
    """Start a daemon thread running target(*args). Raises RuntimeError when it cannot start."""
    threading.Thread(target=target, args=args, daemon=True).start()


def drain_and_close(sock: socket.socket) -> None:
    """Read what the peer sent (so close() sends FIN, not RST), then close."""
    with contextlib.suppress(OSError):
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass
    sock.close()
