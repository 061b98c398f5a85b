"""The WebSocket transport: websocket-server 0.6.4 with its defects fixed, in one place.

This is the only module that imports `websocket_server`. The rest of roomchat sees a connection
(`send_frame`, `close`, `peer`, `path`, `headers`) and callbacks on the app:
`on_handshake(target, headers)` (None, or a refusal as (status, reason[, headers])),
`on_connect(conn)`, `on_texts(conn, [text, ...])` (messages that arrived together, in order),
`on_close(conn)`, and `on_http(method, path, headers)` for plain HTTP on the same port.

Each override below says what upstream does, what we do instead, and which test pins it.
The version is pinned (requirements.txt) because the overrides rely on upstream internals:
`request`, `server`, `handshake_done` and `WebsocketServer.__init__`'s hardcoded handler.
"""

import base64
import contextlib
import hashlib
import http.client
import io
import logging
import socket
import threading
import time

from websocket_server import WebSocketHandler, WebsocketServer

from chatserver import frames
from chatserver.errors import FrameError, HandshakeError
from chatserver.outbox import Flusher, Outbox

log = logging.getLogger("roomchat.transport")

MAX_REQUEST_HEAD = 16 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_LINGER = 1.0  # seconds we keep reading after our close frame so the peer can read it
MAX_BATCH = 64  # messages from one client handled together when they arrived together
# Linux grows a socket's send buffer to 4 MiB for a peer that stops reading; a fixed size keeps
# "how far behind may a client fall" close to max_outbox_bytes (the kernel doubles this value).
SOCKET_SEND_BUFFER = 128 * 1024


class RoomchatHandler(WebSocketHandler):
    """One client connection, served on its own thread by socketserver.

    Lifecycle: `setup` -> `handle` (handshake, then one message at a time) -> `finish`.
    """

    # upstream (via StreamRequestHandler) wraps the socket in a buffered file and a writer per
    # connection: 8 KiB of buffer held by every idle client, and calls through three layers.
    # fix: one SocketReader whose buffer exists only while bytes are waiting to be parsed.
    # tests: test_transport.py (every test reads through it); bench S4 measures idle memory.
    def setup(self):
        self.connection = self.request
        self.reader = SocketReader(self.request)
        self.handshake_done = False
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        # Chat frames are small and latency matters: don't let Nagle hold one back for an ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = "{}:{}".format(*self.client_address[:2])
        self.path = ""
        self.headers = {}
        self.client = None  # set by the app in on_connect
        self.close_reason = "connection lost"
        self.last_seen = time.monotonic()
        self.ping_sent_at = None
        self._closing = False
        self._left = False
        self.outbox = Outbox(
            self.request,
            self.server.max_outbox_bytes,
            self.server.flusher,
            self._on_overflow,
            frames.close_frame(frames.CLOSE_POLICY_VIOLATION, "too slow: outgoing queue full"),
        )

    def __repr__(self):
        return f"<conn {self.peer}>"

    # upstream: `while keep_alive: handshake() / read_next_message()`, where a failed handshake or an
    # unknown opcode only flips keep_alive and a traceback escapes for bad input.
    # fix: one linear flow; every error ends in a defined HTTP status or close code.
    # tests: tests/integration/test_transport.py
    def handle(self):
        self.server.track(self)
        try:
            if not self.handshake():
                return
            self.server.app.on_connect(self)
            self.read_messages()
        finally:
            self.server.untrack(self)

    # upstream: asserts GET, splits headers by hand, KeyError traceback on a plain GET, no limits.
    # fix: parse with http.client, 400/405/426/431 answers, a deadline, plain HTTP goes to on_http.
    # tests: test_transport.py::test_handshake_*, test_plain_get_*
    def handshake(self) -> bool:
        sock = self.request
        sock.settimeout(self.server.handshake_timeout)
        try:
            method, target, headers = read_request_head(self.reader)
            self.path, self.headers = target, headers
            if "websocket" not in headers.get("upgrade", "").lower():
                self._http_reply(*self.server.app.on_http(method, target, headers), head_only=method == "HEAD")
                self.close_reason = f"http {method} {target[:80]}"
                return False
            response = accept_upgrade(method, headers)
            refusal = self.server.app.on_handshake(target, headers)  # (status, reason[, headers]) or None
            if refusal is not None:
                raise HandshakeError(*refusal)
            sock.settimeout(None)  # from here every wait is bounded by pings and close deadlines instead
            sock.sendall(response)
        except HandshakeError as exc:
            plain = {"Content-Type": "text/plain; charset=utf-8", **exc.headers}
            self._http_reply(exc.status, plain, exc.reason.encode() + b"\n")
            self.close_reason = f"handshake refused: {exc.status} {exc.reason}"
            return False
        except (OSError, EOFError) as exc:  # timeout, reset, or gone before the head was complete
            self.close_reason = "handshake timed out" if isinstance(exc, TimeoutError) else "gone during handshake"
            return False
        finally:
            self.server.handshake_finished(self)
        self.handshake_done = True
        return True

    # upstream: reads any payload length it is told, unmasks byte by byte, ignores binary and
    # continuation frames (the stream falls out of step), never answers a close.
    # fix: frames.FrameReader (limits before reading, fast unmask, fragments, UTF-8 checks);
    # every FrameError becomes its close code. tests: tests/unit/test_frames.py, test_transport.py
    def read_messages(self) -> None:
        reader = frames.FrameReader(self.reader.read_exact, self.server.max_message_bytes)
        texts = []  # messages read but not yet handled: all that arrived together, up to MAX_BATCH
        while True:
            if texts and (len(texts) >= MAX_BATCH or not self.reader.frame_ready()):
                if not self._handle_texts(texts, reader):
                    return
                texts = []
            try:
                event = reader.next_event()
            except FrameError as exc:  # a payload may be left unread: the stream is out of step
                if not texts or self._handle_texts(texts, reader):
                    self.fail(exc.close_code, exc.reason)
                return
            except (OSError, EOFError, ValueError):
                return
            self.last_seen = time.monotonic()
            if isinstance(event, frames.Text):
                if not self._closing:
                    texts.append(event.text)
            elif isinstance(event, frames.Ping):
                self.send_frame(frames.encode_frame(frames.OP_PONG, event.payload))
            elif isinstance(event, frames.Close):
                if texts and not self._handle_texts(texts, reader):
                    return
                if not self._closing:  # the peer started the close: echo its code (RFC 6455 5.5.1)
                    self._closing = True
                    self.close_reason = f"client closed ({event.code})"
                    echo = frames.close_frame(event.code) if event.code else frames.encode_frame(frames.OP_CLOSE, b"")
                    self.outbox.put_last(echo)
                    self.outbox.drain(CLOSE_LINGER)
                return

    def _handle_texts(self, texts: list, reader: frames.FrameReader) -> bool:
        """Hand messages that arrived together to the app in one call (so their fan-out can share
        one write per member). False if the connection was closed instead."""
        if self._closing:  # dropped (too slow, ping timeout, shutdown): its requests go unanswered
            return True
        try:
            self.server.app.on_texts(self, texts)
            return True
        except FrameError as exc:
            self.fail(exc.close_code, exc.reason, reader)
        except Exception:  # a bug: log it, and don't tell the peer details
            log.exception("handler failed for %s", self.peer)
            self.fail(frames.CLOSE_INTERNAL_ERROR, "internal error", reader)
        return False

    # upstream: `self.request.send(header + payload)` under `_send_lock`: partial writes are lost.
    # fix: every frame goes through this connection's Outbox (complete writes, in order, never
    # blocking the caller). tests: test_transport.py::test_large_message_arrives_whole, test_slow_reader_*
    def send_frame(self, frame: bytes) -> None:
        self.outbox.put(frame)

    def send_ping(self) -> None:
        self.ping_sent_at = time.monotonic()
        self.send_frame(frames.encode_frame(frames.OP_PING, b"roomchat"))

    def close(self, code: int, reason: str, grace: float = CLOSE_LINGER) -> None:
        """Start a close from any thread: queue our close frame, and cut the TCP connection after
        `grace` seconds unless the peer answered first."""
        if self._closing:
            return
        self._closing = True
        self.close_reason = f"closed by server ({code} {reason})"
        self.outbox.put_last(frames.close_frame(code, reason))
        self.server.abort_later(self, grace)

    def fail(self, code: int, reason: str, reader: frames.FrameReader | None = None) -> None:
        """Close from this connection's own thread after a protocol or policy error.

        Then keep reading for a moment, so our close frame is not lost to a TCP reset: until the
        peer's close frame when the stream is still in step (`reader` given), else until EOF."""
        self._closing = True
        self.close_reason = f"closed by server ({code} {reason})"
        self.outbox.put_last(frames.close_frame(code, reason))
        self.leave()
        self.outbox.drain(CLOSE_LINGER)
        deadline = time.monotonic() + CLOSE_LINGER
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.request.settimeout(left)
                if reader is not None:
                    if isinstance(reader.next_event(), frames.Close):
                        return
                elif not self.request.recv(65536):
                    return
        except (OSError, EOFError, ValueError, FrameError):
            pass

    def _on_overflow(self) -> None:
        # Runs inside Outbox's lock (and often the Registry's) on whatever thread was sending:
        # only flags and a schedule here. The Outbox has queued our 1008 close frame; the peer
        # gets CLOSE_LINGER to read it, while its rooms hear of its leave on the next tick.
        self._closing = True
        self.close_reason = "closed by server (1008 too slow: outgoing queue full)"
        self.server.abort_later(self, CLOSE_LINGER, leave_now=True)

    def abort(self) -> None:
        """Cut the TCP connection so this connection's thread wakes up and finishes."""
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)

    def leave(self) -> None:
        """Tell the app this client is gone (once): rooms get their presence `leave` now."""
        if not self._left:
            self._left = True
            if self.handshake_done:
                self.server.app.on_close(self)

    # upstream: calls `server._client_left_` even when the handshake never completed, which does
    # a linear scan of an unlocked list and calls client_left(None).
    # fix: tell the app only about connections it saw; detach the outbox before the socket closes.
    # tests: test_transport.py::test_plain_get_*, test_protocol_v1.py::test_presence_on_abrupt_disconnect
    def finish(self):
        try:
            self.leave()
        finally:
            self.outbox.detach()
            self.server.log_disconnect(self)

    def _http_reply(self, status: int, headers: dict, body: bytes, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Unknown')}"]
        headers = {"Content-Length": str(len(body)), "Connection": "close", **headers}
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        with contextlib.suppress(OSError):
            self.request.sendall(head if head_only else head + body)


class RoomchatServer(WebsocketServer):
    """Thread-per-client server with our handler, our connection set and two helper threads:
    the Flusher (queued writes) and the housekeeper (handshake deadlines, pings, delayed aborts).
    """

    request_queue_size = 1024  # socketserver's default backlog of 5 drops bursts of new clients

    # upstream: `TCPServer.__init__(self, (host, port), WebSocketHandler)`, a `clients` list that
    # every thread changes without a lock, and `logging.basicConfig()` at import time.
    # fix: our handler class, our own lock-guarded connection set (upstream's list stays empty).
    # tests: every integration test runs through this class.
    def __init__(self, app, host, port, *, max_message_bytes, max_outbox_bytes, handshake_timeout,
                 ping_interval, ping_timeout):
        super().__init__(host=host, port=port)
        self.RequestHandlerClass = RoomchatHandler
        self.app = app
        self.max_message_bytes = max_message_bytes
        self.max_outbox_bytes = max_outbox_bytes
        self.handshake_timeout = handshake_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.flusher = Flusher()
        self._lock = threading.Lock()
        self._connections: set[RoomchatHandler] = set()
        self._handshaking: dict[RoomchatHandler, float] = {}  # conn -> deadline
        self._aborts: dict[RoomchatHandler, float] = {}  # conn -> when to cut it
        self._dropped: list[RoomchatHandler] = []  # too slow: leave their rooms before the cut
        self._all_gone = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._serving = False
        self._housekeeper = threading.Thread(target=self._housekeep, name="roomchat-housekeeper", daemon=True)

    def serve(self) -> None:
        """Accept connections until `stop_accepting()`; call from the thread that owns the server."""
        self.flusher.start()
        self._housekeeper.start()
        self._serving = True
        self.serve_forever(poll_interval=0.05)

    # -- connection bookkeeping ------------------------------------------------------------------

    def track(self, conn: RoomchatHandler) -> None:
        with self._lock:
            self._connections.add(conn)
            self._handshaking[conn] = time.monotonic() + self.handshake_timeout

    def handshake_finished(self, conn: RoomchatHandler) -> None:
        with self._lock:
            self._handshaking.pop(conn, None)

    def untrack(self, conn: RoomchatHandler) -> None:
        with self._lock:
            self._connections.discard(conn)
            self._handshaking.pop(conn, None)
            self._aborts.pop(conn, None)
            if not self._connections:
                self._all_gone.notify_all()

    def abort_later(self, conn: RoomchatHandler, delay: float, leave_now: bool = False) -> None:
        """Cut `conn` after `delay`; with `leave_now`, let the app forget it on the next tick."""
        with self._lock:
            self._aborts[conn] = time.monotonic() + delay
            if leave_now:
                self._dropped.append(conn)

    def log_disconnect(self, conn: RoomchatHandler) -> None:
        if conn.handshake_done:
            nick = conn.client.nick if conn.client else "-"
            log.info("disconnect %s %s: %s", conn.peer, nick, conn.close_reason)
        else:
            log.debug("%s %s", conn.peer, conn.close_reason)

    # upstream: `handle_error` prints a traceback to stderr for anything a handler raised.
    # fix: log it once through `logging`, without the noise for a peer that just went away.
    def handle_error(self, request, client_address):
        log.exception("connection %s failed", client_address)

    # -- housekeeping ---------------------------------------------------------------------------

    def _housekeep(self) -> None:
        """Every tick: cut handshakes past their deadline and connections due to be aborted,
        tell the app at once about clients dropped for being too slow; every few ticks: ping."""
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
            for conn in dropped:
                conn.leave()  # presence `leave` now, though the socket lingers for the close frame
            for conn in late + due:
                conn.abort()
            if conns:
                next_check = now + check_every
                for conn in conns:
                    self._check_alive(conn, now)

    def _check_alive(self, conn: RoomchatHandler, now: float) -> None:
        """Ping a connection that has been quiet for ping_interval; close one that has not
        answered its ping within ping_timeout. One ping at a time per connection."""
        if not conn.handshake_done:
            return
        waiting = conn.ping_sent_at is not None and conn.last_seen < conn.ping_sent_at
        if waiting:
            if now - conn.ping_sent_at >= self.ping_timeout:
                conn.close(frames.CLOSE_INTERNAL_ERROR, "ping timeout", grace=0)
        elif now - max(conn.last_seen, conn.ping_sent_at or 0) >= self.ping_interval:
            conn.send_ping()

    # -- shutdown -------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        if self._serving:  # socketserver's shutdown() would wait forever for a loop never started
            self.shutdown()
        self.server_close()

    def close_all(self, code: int, reason: str, timeout: float = 1.5) -> None:
        """Send every client a close frame, give them until `timeout` to answer, then cut."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            if conn.handshake_done:
                conn.close(code, reason, grace=timeout * 0.6)
            else:
                conn.abort()
        with self._lock:
            self._all_gone.wait_for(lambda: not self._connections, timeout)
            left = list(self._connections)
        for conn in left:
            conn.abort()
        self._stop.set()
        self.flusher.stop()


class SocketReader:
    """Exact-size reads from a blocking socket, for the frame parser and the handshake.

    One `recv` often brings several frames; they are sliced from the same bytes object. Between
    messages an idle connection keeps no buffer at all.
    """

    __slots__ = ("_buf", "_pos", "_sock")
    RECV_SIZE = 65536  # when a message is under way: take whatever has arrived in one call
    IDLE_RECV_SIZE = 1024  # when waiting for the next message: recv() allocates this much while it blocks

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def read_exact(self, n: int) -> bytes:
        """Return exactly `n` bytes; EOFError if the peer closes first."""
        buf, pos = self._buf, self._pos
        end = pos + n
        if end <= len(buf):
            self._pos = end
            return buf[pos:end]
        parts = [buf[pos:]]
        have = len(buf) - pos
        while have < n:
            chunk = self._sock.recv(max(self.RECV_SIZE if have else self.IDLE_RECV_SIZE, n - have))
            if not chunk:
                raise EOFError
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buf, self._pos = data, n
        if n == len(data):  # nothing left over: drop the buffer rather than keep it while idle
            self._buf, self._pos = b"", 0
        return data[:n]

    def frame_ready(self) -> bool:
        """A whole frame is already buffered: the next frame read will not block."""
        return frames.frame_ready(self._buf, self._pos)

    def readline(self, limit: int) -> bytes:
        """A line ending in LF, or `limit` bytes if no LF comes first; b"" at EOF."""
        while True:
            end = self._buf.find(b"\n", self._pos, self._pos + limit)
            if end >= 0 or len(self._buf) - self._pos >= limit:
                stop = end + 1 if end >= 0 else self._pos + limit
                line, self._pos = self._buf[self._pos : stop], stop
                return line
            chunk = self._sock.recv(4096)
            if not chunk:
                line, self._buf, self._pos = self._buf[self._pos :], b"", 0
                return line
            self._buf = self._buf[self._pos :] + chunk
            self._pos = 0


def read_request_head(rfile) -> tuple[str, str, dict]:
    """Read an HTTP/1.1 request line and headers (at most 16 KiB) with the standard library.

    Returns (method, target, headers with lower-case names). Raises HandshakeError for a
    malformed or oversized head and EOFError if the peer leaves before finishing it.
    """
    line = rfile.readline(MAX_REQUEST_HEAD + 1)
    if not line:
        raise EOFError
    total = len(line)
    if total > MAX_REQUEST_HEAD:
        raise HandshakeError(431, "request line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1]:
        raise HandshakeError(400, "malformed request line")
    head = []
    while True:
        if total > MAX_REQUEST_HEAD:
            raise HandshakeError(431, "request header fields too large")
        line = rfile.readline(MAX_REQUEST_HEAD + 1 - total)
        if not line:
            raise EOFError
        total += len(line)
        if line in (b"\r\n", b"\n"):
            break
        if line.endswith(b"\n") and (b":" not in line or line[:1] in b" \t"):
            raise HandshakeError(400, "malformed header line")
        head.append(line)
    try:
        message = http.client.parse_headers(io.BytesIO(b"".join(head) + b"\r\n"))
    except http.client.HTTPException:  # more than 100 header lines
        raise HandshakeError(431, "too many request header fields") from None
    headers = {}
    for name, value in message.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return parts[0], parts[1], headers


def accept_upgrade(method: str, headers: dict) -> bytes:
    """Check a WebSocket opening request (RFC 6455 4.2.1) and return the 101 response."""
    if method != "GET":
        raise HandshakeError(405, "a WebSocket upgrade must use GET", {"Allow": "GET"})
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError(426, "unsupported WebSocket version; use 13", {"Sec-WebSocket-Version": "13"})
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HandshakeError(400, "missing or invalid Sec-WebSocket-Key")
    if "upgrade" not in headers.get("connection", "").lower():
        raise HandshakeError(400, "Connection header must include Upgrade")
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()
