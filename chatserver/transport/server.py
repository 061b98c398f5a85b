"""The WebSocket transport: connections from accept to close, on websocket-server 0.6.4.

The rest of roomchat sees a connection (`send_frame`, `close`, `peer`, `path`, `headers`, and the
`client`/`context` attributes the app sets) and calls these methods of the app:
`on_handshake(target, headers)` (None, or a refusal as (status, reason[, headers])),
`on_connect(conn)`, `on_texts(conn, [text, ...])` (messages that arrived together, in order),
`on_close(conn, close_code)`, `on_refused(status)`, and `on_http(request, peer_ip, address,
refused)` for plain HTTP (its body read: `_answer_http`).
Beside it in transport/: streams.py (socket reads, queued writes), state.py, housekeeper.py and
tls.py; outside it: wire/handshake.py (the opening handshake), wire/frames.py (RFC 6455
framing), wire/proxies.py, wire/exposure.py.

What is still used from websocket-server 0.6.4 (pinned in requirements.txt, since the overrides
rely on its internals): `WebsocketServer`'s base classes (socketserver's `ThreadingMixIn` and
`TCPServer`: the listening socket, the accept loop, one thread per connection, `port`) and
`WebSocketHandler`'s constructor (`StreamRequestHandler`'s `setup` -> `handle` -> `finish`; its
TLS wrapping stays off, as the server's `key`/`cert` are never set). Everything that touches the
bytes is ours: each override below says what upstream does, the fix, and the test that pins it.
Do not call the package's own API methods (`run_forever`, `send_message`, `send_message_to_all`,
`shutdown_gracefully`, `shutdown_abruptly`, `disconnect_clients_*`, `deny_new_connections`,
`set_fn_*`): they write to sockets directly and read upstream's `clients` list, bypassing our
outbox (ordering, slow-reader limits) and the app's registry (the one record of who is
connected). Use `serve`, `stop_accepting`, `close_all` and `Connection.send_frame`/`close`.

What a connection does with what its client sends (`read_messages`, on its own thread): every
frame costs one token of the client's rate (RFC 6455 section 10.3 leaves a server free to limit
what a peer may consume): the app charges the first frame of each text message (dispatch), the
read loop every other one, so a ping, a pong or a continuation frame costs as much as a message.
A ping over the budget gets no pong; a client that keeps going past `FLOOD_FACTOR` x burst
refusals in a row is closed with 1008, as for messages. `pace` keeps a client from queueing more
replies than it reads.

Threads and locks: app.py's docstring lists every thread and lock of the server, this module's
included, and the order locks are taken in.
"""

import contextlib
import dataclasses
import ipaddress
import logging
import socket
import ssl
import threading
import time

from websocket_server import WebSocketHandler, WebsocketServer

from chatserver.errors import CloseConnection, HandshakeError
from chatserver.ops import logs
from chatserver.protocol import CloseCode
from chatserver.transport.caps import AcceptGate, BurstLog, ConnectionCaps
from chatserver.transport.housekeeper import Housekeeper
from chatserver.transport.state import ConnectionState, State
from chatserver.transport.streams import Flusher, Outbox, SocketReader
from chatserver.transport.tls import TlsSession
from chatserver.wire import frames, handshake
from chatserver.wire.proxies import TrustedProxies

log = logging.getLogger("roomchat.transport")

PING = frames.encode_frame(frames.OP_PING, b"roomchat")
# Linux grows a socket's send buffer to 4 MiB for a peer that stops reading; a fixed size keeps
# "how far behind may a client fall" close to max_outbox_bytes (the kernel doubles this value).
SOCKET_SEND_BUFFER = 128 * 1024
MAX_BATCH = 64  # messages from one client handled together when they arrived together
PACE_TICK = 1.0  # seconds between progress checks while a client's requests wait for its replies to leave
CLOSE_LINGER = 1.0  # seconds we keep reading after our close frame so the peer can read it
LINGER_BYTES = 4 * 2**20  # bytes of a refused HTTP body read (and dropped) at most while we linger


class Connection(WebSocketHandler):
    """One client connection, served on its own thread by socketserver.

    Lifecycle: `setup` -> `handle` (handshake, then one message at a time) -> `finish`.
    `state` changes only through `ConnectionState.move` (transport/state.py), which also says why a second
    close or disconnect from another thread is harmless.
    """

    limiter = None  # client.TokenBucket, set by the app in on_connect: every frame costs

    # upstream (via StreamRequestHandler) wraps the socket in a buffered file and a writer per
    # connection: 8 KiB of buffer held by every idle client, and calls through three layers.
    # fix: one SocketReader whose buffer exists only while bytes are waiting to be parsed.
    # tests: test_transport.py (every test reads through it); bench S4 measures idle memory.
    def setup(self):
        """Prepare the socket, reader, outbox and TLS session (no I/O). Raises OSError if the socket is gone."""
        self.connection = self.request
        context = self.server.ssl_context
        self.tls = TlsSession(context, self.request) if context else None  # the TLS handshake waits for handle()
        self.reader = SocketReader(self.tls.recv if self.tls else self.request.recv)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        # Chat frames are small and latency matters: don't let Nagle hold one back for an ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ip, port = self.client_address[:2]
        self.peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        self.address = self.client_address[0]  # the client's IP (behind a trusted proxy: the one it reports)
        self.path = ""
        self.headers = {}
        self.client = None  # set by the app in on_connect
        self.counted_address = None  # a client behind a trusted proxy, once counted (transport/caps.py)
        self._life = ConnectionState()  # state and close reason, changed only by its move()
        self.last_seen = time.monotonic()
        self.ping_sent_at = None
        self.outbox = Outbox(
            self.request,
            self.server.max_outbox_bytes,
            self.server.flusher,
            self._on_overflow,
            frames.close_frame(CloseCode.POLICY_VIOLATION, "too slow: outgoing queue full"),
            self.tls.encrypt if self.tls else None,
            self.server.max_reply_bytes,
        )

    def __repr__(self):
        return f"<conn {self.peer} {self.state.value}>"

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED (transport/state.py); read from any thread."""
        return self._life.state

    # upstream: `while keep_alive: handshake() / read_next_message()`, where a failed handshake or an
    # unknown opcode only flips keep_alive and a traceback escapes for bad input.
    # fix: one linear flow; every error ends in a defined HTTP status or close code.
    # tests: tests/integration/test_transport.py
    def handle(self):
        """socketserver's hook, on this connection's thread: handshake, `on_connect`, then read
        messages until the connection ends. Raises only what the app's callbacks raise from
        `on_connect` (a bug, which socketserver hands to `WebSocketTransport.handle_error`)."""
        self.server.housekeeper.track(self)
        try:
            if not self.handshake():
                return
            self.server.app.on_connect(self)
            self.read_messages()
        finally:
            self.server.housekeeper.untrack(self)

    # upstream: asserts GET, splits headers by hand, KeyError traceback on a plain GET, no limits.
    # fix: wire/handshake.py parses and decides (400/405/426/431), under a deadline; plain HTTP goes to
    # on_http. tests: tests/unit/test_handshake.py, test_transport.py::test_handshake_*, test_plain_get_*
    def handshake(self) -> bool:
        """Run TLS if on, then read the opening request and answer it (RFC 6455 section 4.2): True
        once the 101 is sent and the connection is OPEN; False after a plain HTTP answer, a refusal
        (the statuses of handshake.read_request/admit/accept, and 400 for plain HTTP on a TLS port),
        a failed TLS handshake, or a peer that left or missed `handshake_timeout`.
        Raises only what `app.on_http` raises (a bug)."""
        sock = self.request
        sock.settimeout(self.server.handshake_timeout)
        try:
            if self.tls:
                self.tls.handshake()
            request = handshake.read_request(self.reader.readline, "https" if self.tls else "http")
            address, scheme = self.server.proxies.client(self.client_address[0], request.headers)
            self.peer = address or self.peer  # from a trusted proxy: the client it reports
            if self.server.proxies.trusts(self.client_address[0]):  # its per-address count starts now
                self.address = address or self.address
                self.server.caps.take_address(self.address)
                self.counted_address = self.address
            request = dataclasses.replace(request, scheme=scheme or request.scheme)
            self.path, self.headers = request.target, request.headers
            handshake.admit(request, self.server.policy)
            if not request.is_upgrade:
                self._answer_http(request)
                return False
            response = handshake.accept(request, self.server.policy)
            refusal = self.server.app.on_handshake(request.target, request.headers)  # (status, reason[, headers])
            if refusal is not None:
                raise HandshakeError(*refusal)
            sock.settimeout(None)  # from here every wait is bounded by pings and close deadlines instead
            self._send_direct(response)
        except HandshakeError as exc:
            self.server.app.on_refused(exc.status)
            with contextlib.suppress(OSError):
                self._send_direct(handshake.refusal(exc))
            self.report_closed(f"handshake refused: {exc.status} {exc.reason}")
            return False
        except ssl.SSLError as exc:
            self.report_closed(f"TLS handshake failed: {exc.reason or exc}")
            return False
        except (OSError, EOFError) as exc:  # timeout, reset, or gone before the head was complete
            self.report_closed("handshake timed out" if isinstance(exc, TimeoutError) else "gone during handshake")
            return False
        finally:
            self.server.housekeeper.handshake_finished(self)
        self._life.move(State.OPEN)
        return True

    # upstream: reads no request body (a POST's body would be parsed as the next request).
    # fix: a plain HTTP request's body is read whole, with a Content-Length only, at most
    # max_message_bytes, within the handshake's deadline (handshake.body_length says what is refused).
    # tests: tests/integration/test_http_api.py, tests/unit/test_handshake.py::test_body_length_*
    def _answer_http(self, request) -> None:
        """Read the body of a plain HTTP request and answer it with `app.on_http(request, peer_ip,
        address, refused)`: `refused` is the HandshakeError when the body was refused (411, 413,
        400: the app words the answer; the body is left unread). The handshake deadline stops
        before the app is asked (an API post waits for the store), and after the answer the
        connection closes, lingering a moment over a body left unread so the client gets the
        answer rather than a reset; a bug in `on_http` is logged and answered 500. Raises OSError,
        EOFError (the caller reports them)."""
        refused = None
        try:
            length = handshake.body_length(request, self.server.max_message_bytes)
            if length and handshake.expects_continue(request):
                self._send_direct(handshake.CONTINUE)
            request = dataclasses.replace(request, body=self.reader.read_exact(length) if length else b"")
        except HandshakeError as exc:
            refused = exc
        self.server.housekeeper.handshake_finished(self)
        try:
            status, headers, body = self.server.app.on_http(request, self.client_address[0], self.address, refused)
        except Exception:  # a bug: log it, answer 500 without details (as 1011 on a WebSocket)
            log.exception("HTTP answer failed for %s %s", self.peer, request.target[:80])
            status, headers, body = 500, {"Content-Type": handshake.TEXT, **handshake.SECURITY_HEADERS}, \
                b"internal error\n"
        with contextlib.suppress(OSError):
            self._send_direct(handshake.response(status, headers, body, head_only=request.method == "HEAD"))
            if refused is not None:
                self._linger()
        self.report_closed(f"http {request.method} {request.target[:80]}")

    def _linger(self) -> None:
        """After an answer that left the body unread: stop writing and read what the client still
        sends (at most LINGER_BYTES, for LINGER seconds), so closing sends a FIN, not a reset that
        could destroy the answer before the client reads it. Raises OSError."""
        self.request.shutdown(socket.SHUT_WR)
        deadline, read = time.monotonic() + CLOSE_LINGER, 0
        while read < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            self.request.settimeout(left)
            chunk = self.request.recv(65536)
            if not chunk:
                return
            read += len(chunk)

    # upstream: `self.request.send(header + payload)` under `_send_lock`: partial writes are lost.
    # fix: every frame goes through this connection's Outbox (complete writes, in order, never
    # blocking the caller). tests: test_transport.py::test_large_message_arrives_whole, test_slow_reader_*
    def send_frame(self, frame: bytes, own: int = 0) -> None:
        """Queue `frame` (whole encoded frames, RFC 6455 5.2) after everything sent before, from any
        thread, without blocking; `own` of its bytes answer this client's own requests, the rest
        counts toward its slow-reader limit (streams.Outbox). Dropped once the connection is
        closing."""
        self.outbox.put(frame, own)

    def backlog(self) -> int:
        """Bytes of others' traffic queued for this client (streams.Outbox), a moment old."""
        return self.outbox.others_queued

    def check_alive(self, now: float, ping_interval: float, ping_timeout: float) -> None:
        """Called by the housekeeper: ping (RFC 6455 5.5.2) an open connection that has been quiet
        for `ping_interval` seconds; close with 1011 one that has not answered its ping within
        `ping_timeout`. One ping at a time."""
        if self.state is not State.OPEN:
            return
        if self.ping_sent_at is not None and self.last_seen < self.ping_sent_at:  # waiting for the pong
            if now - self.ping_sent_at >= ping_timeout:
                self.close(CloseCode.INTERNAL_ERROR, "ping timeout", grace=0)
        elif now - max(self.last_seen, self.ping_sent_at or 0) >= ping_interval:
            self.ping_sent_at = now
            self.send_frame(PING, own=len(PING))

    def close(self, code: int, reason: str, grace: float = CLOSE_LINGER) -> None:
        """Start a close from any thread (RFC 6455 7.1.2): queue our close frame with `code`
        (7.4.1) and `reason`, and cut the TCP connection after `grace` seconds unless the peer
        answered first. A no-op unless the connection is OPEN."""
        if self._life.move(State.CLOSING, f"closed by server ({code} {reason})", code) is None:
            return
        self.outbox.put_last(frames.close_frame(code, reason))
        self.server.housekeeper.abort_later(self, grace)

    def fail(self, code: int, reason: str, reader: frames.FrameReader | None = None) -> None:
        """Close from this connection's own thread after a protocol or policy error (RFC 6455
        7.1.7, "Fail the WebSocket Connection"), and tell the app at once.

        Then keep reading for a moment, so our close frame is not lost to a TCP reset: until the
        peer's close frame when the stream is still in step (`reader` given), else until EOF."""
        self._life.move(State.CLOSING, f"closed by server ({code} {reason})", code)
        self.outbox.put_last(frames.close_frame(code, reason))
        self.report_closed()
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
        except (OSError, EOFError, ValueError, CloseConnection):
            pass

    def _on_overflow(self) -> None:
        # Runs inside Outbox's lock (and often the Registry's) on whatever thread was sending:
        # only a state move and a schedule here. The Outbox has queued our 1008 close frame behind
        # what the kernel holds; the peer gets `drop_linger` to read it (and answer, which ends
        # this connection's thread), while its rooms hear of its leave on the next tick.
        code = CloseCode.POLICY_VIOLATION
        self._life.move(State.CLOSING, f"closed by server ({code} too slow: outgoing queue full)", code)
        self.server.housekeeper.abort_later(self, self.server.drop_linger, report_now=True)

    def abort(self) -> None:
        """Cut the TCP connection so this connection's thread wakes up and finishes."""
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)

    def report_closed(self, reason: str = "connection lost") -> None:
        """Report this connection as gone, once, from whichever thread sees it first: the app's
        `on_close` runs (its rooms get their presence `leave` now) if the app knew of it, and the
        disconnect is logged. `reason` is logged unless an earlier one was given. Raises only
        what `app.on_close` raises (a bug)."""
        was = self._life.move(State.CLOSED, reason)
        if was is None:
            return
        if was is State.CONNECTING:
            log.debug("%s %s", self.peer, self._life.reason)
            return
        code = self._life.code or 1006  # 1006: ended without a close frame (7.1.5)
        self.server.app.on_close(self, code)
        nick = self.client.nick if self.client else None
        log.info("disconnect %s %s: %s", self.peer, nick or "-", self._life.reason,
                 extra=logs.context(peer=self.peer, nick=nick, code=code))

    # upstream: calls `server._client_left_` even when the handshake never completed, which does
    # a linear scan of an unlocked list and calls client_left(None).
    # fix: tell the app only about connections it saw; detach the outbox before the socket closes.
    # tests: test_transport.py::test_plain_get_*, test_protocol_v1.py::test_presence_on_abrupt_disconnect
    def finish(self):
        """socketserver's last hook on this thread: report the connection closed (if nobody has)
        and stop its outbox; socketserver then closes the socket. Raises what `report_closed` does."""
        try:
            self.report_closed()
        finally:
            self.outbox.detach()
            self.server.caps.give_back(self.counted_address, total=False)

    def _send_direct(self, data: bytes) -> None:
        """Write during the handshake (before the outbox is in use); through TLS once it is up."""
        self.outbox.write_direct(self.tls.encrypt(data) if self.tls and self.tls.established else data)

    # -- the read side: what the client sends --------------------------------------------------

    # upstream: reads any payload length it is told, unmasks byte by byte, ignores binary and
    # continuation frames (the stream falls out of step), never answers a close.
    # fix: frames.FrameReader (limits before reading, fast unmask, fragments, UTF-8 checks);
    # every CloseConnection becomes its close code. tests: tests/unit/test_frames.py, test_transport.py
    def read_messages(self) -> None:
        """Read frames until the connection ends (RFC 6455 section 5 and 6.2): texts go to the
        app in batches, pings are answered with pongs (5.5.2/5.5.3), a close is echoed (5.5.1),
        and a CloseConnection from the frame reader or the app ends it with its close code (7.1.7).
        EOF and socket errors end the loop."""
        reader = frames.FrameReader(self.reader.read_exact, self.server.max_message_bytes)
        texts = []  # messages read but not yet handled: all that arrived together, up to MAX_BATCH
        charged = 0  # frames read and paid for (reader.frames counts every frame read)
        while True:
            if texts and (len(texts) >= MAX_BATCH or not self.reader.frame_ready()):
                if not self._handle_texts(texts, reader):
                    return
                texts = []
            try:
                event = reader.next_event()
            except CloseConnection as exc:  # a payload may be left unread: the stream is out of step
                if not texts or self._handle_texts(texts, reader):
                    self.fail(exc.close_code, exc.reason)
                return
            except (OSError, EOFError, ValueError):
                return
            self.last_seen = time.monotonic()
            # every frame since the last event; a text message's first frame is the app's to charge
            cost, charged = reader.frames - charged - isinstance(event, frames.Text), reader.frames
            paid = self._pay(cost) if cost and not isinstance(event, frames.Close) else True
            if paid is None:
                if not texts or self._handle_texts(texts, reader):
                    self.fail(CloseCode.POLICY_VIOLATION, "rate limit exceeded", reader)
                return
            if isinstance(event, frames.Text):
                if self.state is State.OPEN:
                    texts.append(event.text)
            elif isinstance(event, frames.Ping):
                if paid:  # over the budget: no pong
                    pong = frames.encode_frame(frames.OP_PONG, event.payload)
                    self.send_frame(pong, own=len(pong))
            elif isinstance(event, frames.Close):
                if texts and not self._handle_texts(texts, reader):
                    return
                # RFC 6455 7.1.5: a close frame without a status code means 1005 for the log.
                said = f"{event.code}" if event.code else "no status code, 1005"
                if self._life.move(State.CLOSING, f"client closed ({said})", event.code or 1005) is not None:  # echo it
                    echo = frames.close_frame(event.code) if event.code else frames.encode_frame(frames.OP_CLOSE, b"")
                    self.outbox.put_last(echo)
                    self.outbox.drain(CLOSE_LINGER)
                return

    def _pay(self, cost: int) -> bool | None:
        """Charge `cost` frames to the client's rate: True if paid, False if over it, None when
        it keeps flooding (close it)."""
        limiter = self.limiter
        if limiter is None:
            return True
        paid = limiter.charge(cost)
        return None if not paid and limiter.flooding else paid

    def _handle_texts(self, texts: list, reader: frames.FrameReader) -> bool:
        """Hand messages that arrived together to the app in one call (so their fan-out can share
        one write per member). False if the connection was closed instead."""
        if self.state is not State.OPEN:  # dropped (too slow, ping timeout, shutdown): requests go unanswered
            return True
        try:
            self.server.app.on_texts(self, texts)
            return True
        except CloseConnection as exc:
            self.fail(exc.close_code, exc.reason, reader)
        except Exception:  # a bug: log it, and don't tell the peer details
            log.exception("handler failed for %s", self.peer)
            self.fail(CloseCode.INTERNAL_ERROR, "internal error", reader)
        return False

    def pace(self) -> None:
        """On this connection's thread, before it handles the client's next request: wait while
        more than `max_reply_bytes` of replies to its earlier requests are still queued, so a
        client that does not read cannot make us hold more. While the outbox makes progress the
        peer counts as alive (no ping timeout); one that takes nothing is found by the pings."""
        sent = self.outbox.sent
        while not self.outbox.wait_for_room(PACE_TICK):
            if self.outbox.sent != sent:
                sent, self.last_seen = self.outbox.sent, time.monotonic()


class WebSocketTransport(AcceptGate, WebsocketServer):
    """Thread-per-client server with our Connection class and two helper threads: the
    Housekeeper (the connection set, handshake deadlines, pings, delayed aborts) and the Flusher
    (queued writes). Not the app's ChatServer: this one knows sockets, not rooms.
    """

    request_queue_size = 1024  # socketserver's default backlog of 5 drops bursts of new clients

    # upstream: `TCPServer.__init__(self, (host, port), WebSocketHandler)`, a `clients` list that
    # every thread changes without a lock, and `logging.basicConfig()` at import time.
    # fix: our handler class, our own lock-guarded connection set (upstream's list stays empty).
    # tests: every integration test runs through this class; test_transport.py::test_upstream_client_list_unused
    def __init__(self, app, host, port, *, max_message_bytes, max_outbox_bytes, handshake_timeout,
                 ping_interval, ping_timeout, policy: handshake.Policy | None = None,
                 proxies: TrustedProxies | None = None, ssl_context: ssl.SSLContext | None = None,
                 max_reply_bytes: int = 256 * 1024, caps: ConnectionCaps | None = None):
        """Bind and listen on (host, port); port 0 picks a free one (see `port`). Sizes in bytes,
        times in seconds; `policy` checks Host and Origin, `proxies` says whose forwarding headers
        to believe, `ssl_context` turns on TLS (transport/tls.py; never upstream's key/cert path), `caps`
        limits connections (transport/caps.py; none by default).
        Raises OSError when the address cannot be bound (in use, say)."""
        # upstream: TCPServer's AF_INET only, so `--host ::` or `::1` fails ("Address family for
        # hostname not supported"). fix: AF_INET6 for an IPv6 host; `::` also takes IPv4 (see
        # server_bind). tests: tests/integration/test_ipv6.py
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(host=host, port=port)
        self.RequestHandlerClass = Connection
        self.app = app
        self.policy = policy or handshake.ACCEPT_ALL
        self.proxies = proxies or TrustedProxies()
        self.ssl_context = ssl_context
        self.max_message_bytes = max_message_bytes
        self.max_outbox_bytes = max_outbox_bytes
        self.max_reply_bytes = max_reply_bytes
        self.drop_linger = ping_timeout  # a client dropped as too slow has this long to read its close frame
        self.caps = caps or ConnectionCaps(0, 0)
        self.refusals = BurstLog()
        self.keep_spare_descriptor()
        self.handshake_timeout = handshake_timeout
        self.flusher = Flusher()
        self.housekeeper = Housekeeper(handshake_timeout, ping_interval, ping_timeout)
        self._serving = self._stopped = False
        self._accepting = threading.Lock()  # guards those two: serve() and stop_accepting() may race

    def server_bind(self) -> None:
        """socketserver's bind step; `::` is dual-stack (IPv4 clients too, as `0.0.0.0` is for IPv4),
        whatever the system's `net.ipv6.bindv6only` says. Raises OSError as bind() does."""
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self):
        """The accept step (transport/caps.py), with an IPv4 client of a dual-stack socket named by
        its IPv4 address ('::ffff:192.0.2.1' -> '192.0.2.1'), so caps, proxies and logs see one form.
        Raises OSError as accept() does."""
        sock, address = super().get_request()
        mapped = ipaddress.ip_address(address[0]).ipv4_mapped if ":" in address[0] else None
        return sock, (str(mapped), address[1]) if mapped else address

    def serve(self) -> None:
        """Accept connections until `stop_accepting()`, on the calling thread (the accept thread).
        Errors in a connection go to `handle_error`."""
        with self._accepting:
            if self._stopped:  # shut down before this thread got going
                return
            self._serving = True
        self.flusher.start()
        self.housekeeper.start()
        self.serve_forever(poll_interval=0.05)

    # upstream: `handle_error` prints a traceback to stderr for anything a handler raised.
    # fix: log it once through `logging`, without the noise for a peer that just went away.
    def handle_error(self, request, client_address):
        """socketserver's hook for an exception a connection's thread did not handle (a bug)."""
        log.exception("connection %s failed", client_address)

    def stop_accepting(self) -> None:
        """Stop the accept loop and close the listening socket."""
        with self._accepting:
            self._stopped, serving = True, self._serving
        if serving:  # socketserver's shutdown() would wait forever for a loop never started
            self.shutdown()
        self.server_close()

    def close_all(self, code: int, reason: str, timeout: float = 1.5) -> None:
        """Send every open connection a close frame with `code` (RFC 6455 7.4.1), give them until
        `timeout` seconds to answer, then cut what is left and stop the helper threads.
        Connections still in their handshake are cut at once."""
        for conn in self.housekeeper.connections():
            if conn.state is State.OPEN:
                conn.close(code, reason, grace=timeout * 0.6)
            elif conn.state is State.CONNECTING:
                conn.abort()
        for conn in self.housekeeper.wait_all_gone(timeout):
            conn.abort()
        self.housekeeper.stop()
        self.flusher.stop()
