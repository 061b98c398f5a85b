"""The terminal client's I/O: command line, WebSocket connection, reconnects, Ctrl-C.

Threads: the main thread reads typed lines (through the console: prompt_toolkit on a terminal, a
reader thread for pipes) and then waits for the end; a `link` thread connects, sends (paced) and
reconnects; a `reader` thread per connection turns server events into printed lines. They share one
Session under one Condition (`_cond`), which also guards `_ws`, `_dropped` and `_stopping`.
Everything printed goes through `_print`, under that lock.

A drop is noticed by the reader: a closed socket at once, a connection that died silently (no FIN:
a network that drops packets) by our own `ping` after ping_interval seconds without a frame, with
ping_timeout seconds for anything to come back (15 + 5 s by default, so at most 20 s). The link
thread then reconnects with backoff, presenting the last resume token (`?resume=`), so the server
gives back our nick and rooms at once. After close 4001 or 4002 it does not reconnect.
"""

import contextlib
import json
import random
import ssl
import sys
import threading
import time

import websocket

from chatclient import render
from chatclient.console import PipeConsole, PromptConsole
from chatclient.events import problem
from chatclient.options import PING_INTERVAL, PING_TIMEOUT, normalize_url, parse_args, with_resume
from chatclient.pacer import Pacer
from chatclient.session import Session

CONNECT_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
QUIT_PATIENCE = 60.0  # after /quit or end of input, how long we keep trying to deliver
CLOSE_WAIT = 1.0  # seconds to wait for the server's answer to our close frame
LINK_ERRORS = (OSError, websocket.WebSocketException)
FINAL_CLOSES = {  # close codes after which we do not reconnect (PROTOCOL.md)
    4001: "your token expired; connect again with a new one",
    4002: "replaced by a new connection with your token or resume token (another client of yours?)",
}


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter, so clients dropped together do not return together."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * random.uniform(0.5, 1.0)


class TerminalClient:
    """Runs a Session over a WebSocket at `url`. `ping_interval`/`ping_timeout` (seconds) find a
    connection that died silently; `sslopt` are websocket-client's TLS options for wss://."""

    def __init__(self, url: str, session: Session, console, err=None, ping_interval: float = PING_INTERVAL,
                 ping_timeout: float = PING_TIMEOUT, sslopt: dict | None = None):
        self.url = url
        self.session = session
        self.console = console
        self.err = err
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.sslopt = sslopt or {}
        self._cond = threading.Condition()
        self._ws = None  # the current connection
        self._reader = None  # ... and its reader thread
        self._dropped = False  # ... and it is gone
        self._stopping = False  # Ctrl-C: the link thread must stop at once
        self._final = None  # why the server closed for good (4001, 4002): no reconnect
        self._give_up_at = None  # monotonic time after quitting when we stop trying to deliver

    def run(self) -> int:
        """Chat until /quit or end of input; return the exit status (130 after Ctrl-C)."""
        with self.console:
            try:
                ws = self._connect()
            except LINK_ERRORS as exc:
                self._complain(f"cannot connect to {self.url.split('?')[0]}: {describe(exc)}")  # no token shown
                return 1
            link = threading.Thread(target=self._serve, args=(ws,), name="link", daemon=True)
            link.start()
            try:
                self.console.feed(self._on_line)
                while link.is_alive():
                    link.join(0.25)  # a timeout, so that a SIGINT is seen here at once
            except KeyboardInterrupt:
                self._interrupt()
                return 130
        return self._status()

    def _status(self) -> int:
        with self._cond:
            refused, undelivered = list(self.session.refused), self.session.undelivered()
        if refused:
            shown = "; ".join(refused[:3]) + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
            self._complain(f"{render.plural(len(refused), 'request')} refused: {shown}")
        if undelivered:
            self._complain(f"{render.plural(undelivered, 'message')} not delivered: the server could not be reached")
        return 1 if refused or undelivered else 0

    def _complain(self, text: str) -> None:
        print(f"roomchat client: {text}", file=self.err or sys.stderr, flush=True)

    def _on_line(self, line: str | None) -> bool:
        """A typed line (None: the input ended); False once no more lines are wanted."""
        with self._cond:
            if line is not None:
                self._print(self.session.handle_line(line))
            else:
                self.session.quitting = True
            self._cond.notify_all()
            return not self.session.quitting

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self) -> websocket.WebSocket:
        """Open a connection (presenting the last resume token), read `welcome`, and start its
        reader thread."""
        with self._cond:
            url = with_resume(self.url, self.session.resume_token)
        ws = websocket.create_connection(url, timeout=CONNECT_TIMEOUT, enable_multithread=True, sslopt=self.sslopt)
        try:
            welcome = json.loads(ws.recv())
        except (ValueError, RecursionError):
            welcome = None
        except LINK_ERRORS:
            ws.shutdown()
            raise
        if problem(welcome) or welcome["type"] != "welcome":
            ws.shutdown()
            raise websocket.WebSocketException("the server did not answer with a roomchat welcome")
        ws.settimeout(self.ping_interval)
        reader = threading.Thread(target=self._read_events, args=(ws,), name="reader", daemon=True)
        with self._cond:
            self._ws, self._reader, self._dropped = ws, reader, False
            self._print(self.session.connected(welcome))
        reader.start()
        return ws

    def _reconnect(self) -> websocket.WebSocket | None:
        """Retry with backoff; None when quitting and nothing is left to deliver, after
        QUIT_PATIENCE, or after Ctrl-C."""
        attempt = 0
        while True:
            with self._cond:
                if self._stopping or self._out_of_patience() or (self.session.quitting
                                                                 and not self.session.undelivered()):
                    return None
                self._cond.wait(backoff(attempt))
            try:
                ws = self._connect()
            except LINK_ERRORS:
                attempt += 1
                continue
            return ws

    def _out_of_patience(self) -> bool:
        """Quitting, and QUIT_PATIENCE has passed since we first noticed. Caller holds _cond."""
        if not self.session.quitting:
            return False
        if self._give_up_at is None:
            self._give_up_at = time.monotonic() + QUIT_PATIENCE
        return time.monotonic() > self._give_up_at

    # -- the link thread and the reader -----------------------------------------------------------

    def _serve(self, ws) -> None:
        """The link thread: send, and reconnect after drops, until done, out of patience or stopped."""
        while True:
            self._pump(ws)
            with self._cond:
                if self._stopping:
                    return
                if self._final:
                    self.session.refused.append(f"the connection: {self._final}")
                    self.session.abandon()
                    self._print([render.error(f"The server closed the connection: {self._final}. Not reconnecting.")])
                    self.console.stop()
                    return
                if self.session.done or not self._dropped:  # done, or out of patience
                    break
                self.session.disconnected()
                self._print([render.notice("connection lost; reconnecting")])
            ws = self._reconnect()
            if ws is None:
                return
        self._close(ws)

    def _pump(self, ws) -> None:
        """Send queued requests, paced, until the connection drops or the session is done."""
        pacer = Pacer.for_limits(self.session.limits)
        while True:
            with self._cond:
                while True:
                    if self._dropped or self._stopping or self.session.done or self._out_of_patience():
                        return
                    retry = self.session.tick()
                    delay = pacer.delay() if self.session.has_request() else None
                    if delay == 0:
                        break
                    left = self._give_up_at - time.monotonic() if self._give_up_at else None
                    waits = [d for d in (delay, retry, left) if d is not None]
                    self._cond.wait(min(waits) if waits else None)
                request = self.session.take_request()
                pacer.take()
            try:
                ws.send(json.dumps(request))
            except LINK_ERRORS:
                self._drop(ws)
                return

    def _read_events(self, ws) -> None:
        """Print every event. A connection can die without a word (a network that drops packets
        sends no FIN): after ping_interval seconds without a frame we send a `ping`, and if
        nothing at all comes within ping_timeout seconds more, we call it a drop."""
        pinged = False
        while True:
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if pinged:
                    break
                pinged = True
                with contextlib.suppress(*LINK_ERRORS):
                    ws.settimeout(self.ping_timeout)
                    ws.send(json.dumps({"type": "ping"}))
                continue
            except (*LINK_ERRORS, ValueError):
                break
            if pinged:
                pinged = False
                with contextlib.suppress(*LINK_ERRORS):
                    ws.settimeout(self.ping_interval)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
                with self._cond:
                    if ws is self._ws and code in FINAL_CLOSES:
                        self._final = f"{FINAL_CLOSES[code]} ({code})"
                break
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                self._handle(frame.data if opcode == websocket.ABNF.OPCODE_TEXT else None)
        with contextlib.suppress(*LINK_ERRORS):
            ws.shutdown()
        self._drop(ws)

    def _handle(self, data: bytes | None) -> None:
        """One message from the server (None: a binary one): print what it means, or one line
        saying what was wrong with it."""
        try:
            event = json.loads(data) if data is not None else None
            lines = None if data is not None else [render.error("The server sent a binary message; ignored.")]
        except (ValueError, RecursionError):
            lines = [render.error("The server sent a message that is not JSON; ignored.")]
        with self._cond:
            if lines is None:
                try:
                    lines = self.session.on_event(event)
                except Exception as exc:  # a bug: say so and go on, since a dead reader would hang the client
                    lines = [render.error(f"Could not handle an event from the server ({exc!r}); ignored.")]
            self._print(lines)
            self._cond.notify_all()

    def _drop(self, ws) -> None:
        """Mark `ws` gone, unless a newer connection has replaced it (an old reader ends late)."""
        with self._cond:
            if ws is self._ws:
                self._dropped = True
            self._cond.notify_all()

    def _close(self, ws) -> None:
        """Close politely (RFC 6455 section 7.1.2): our close frame with 1000, the server's answer
        (read by the reader thread) for up to CLOSE_WAIT seconds, then the socket."""
        with contextlib.suppress(*LINK_ERRORS):
            if ws.connected:
                ws.send_close(websocket.STATUS_NORMAL)
        with self._cond:
            reader = self._reader if ws is self._ws else None
        if reader is not None and reader is not threading.current_thread():
            reader.join(CLOSE_WAIT)
        with contextlib.suppress(*LINK_ERRORS):
            ws.shutdown()

    def _interrupt(self) -> None:
        """Ctrl-C: stop the link thread, and close the connection with 1000 before exiting."""
        with self._cond:
            self._stopping = True
            ws = None if self._dropped else self._ws
            self._cond.notify_all()
        if ws is not None:
            self._close(ws)

    def _print(self, lines) -> None:
        for line in lines:
            self.console.print(line)


def describe(exc: BaseException) -> str:
    """A connection failure in a few words, without a traceback."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({exc.verify_message}); --cafile PATH trusts its CA"
    if isinstance(exc, websocket.WebSocketBadStatusException):  # refused at the handshake: status and reason
        body = (getattr(exc, "resp_body", None) or b"").decode("utf-8", "replace").strip().splitlines()
        status = f"{exc.status_code} {getattr(exc, 'status_message', '') or ''}".strip()
        return f"the server refused the connection ({status})" + (f": {render.safe(body[0][:200])}" if body else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def prompt_text(session: Session) -> str:
    """The prompt on a terminal: where a plain line goes and who sends it, e.g. `[lobby] ann> `."""
    room = render.safe(session.room) if session.room else "no room"
    return f"[{room}] {render.safe(session.nick or '...')}> "


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets an escape, not a crash
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    session = Session(nick=args.nick, room=args.room, strict=not terminal)
    console = PromptConsole(lambda: prompt_text(session)) if terminal else PipeConsole()
    client = TerminalClient(normalize_url(args.url), session, console, ping_interval=args.ping_interval,
                            ping_timeout=args.ping_timeout, sslopt=args.sslopt)
    try:
        return client.run()
    except KeyboardInterrupt:  # before the connection was up
        return 130
