"""The terminal client's I/O: command line, WebSocket connection, stdin, and reconnects.

Three threads share one Session under one Condition: the main thread connects and sends (paced),
a reader thread turns server events into printed lines, and a stdin thread turns typed lines
into queued requests. Everything they print goes through `_print`, under the same lock.
"""

import argparse
import contextlib
import json
import random
import sys
import threading
import time

import websocket

from chatclient import render
from chatclient.session import Pacer, Session

DEFAULT_URL = "ws://127.0.0.1:8765/"
CONNECT_TIMEOUT = 10.0
IDLE_PING = 30.0  # seconds of silence before we ping; as long again without an answer is a drop
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 15.0
QUIT_PATIENCE = 30.0  # after /quit or end of input, how long we keep reconnecting to deliver
LINK_ERRORS = (OSError, websocket.WebSocketException)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="roomchat.py client",
        description="Chat in roomchat rooms from a terminal; lines come from stdin, so pipes work too.",
        epilog="Exit status: 0 when every message was confirmed by the server, 1 when a message was "
        "refused or the server could not be reached. Type /help once connected for the commands.",
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"server address (default {DEFAULT_URL})")
    parser.add_argument("--nick", help="nick to use (default: the guest nick the server gives)")
    parser.add_argument("--room", help="room to join at start; plain lines go there")
    return parser.parse_args(argv)


def normalize_url(url: str) -> str:
    """Accept ws://, wss://, http:// and https:// addresses, or a bare HOST:PORT."""
    if url.startswith(("http://", "https://")):
        url = "ws" + url[len("http"):]
    if "://" not in url:
        url = "ws://" + url
    return url if url.count("/") > 2 else url + "/"


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter, so clients dropped together do not return together."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * random.uniform(0.5, 1.0)


class TerminalClient:
    def __init__(self, url: str, session: Session, out=sys.stdout, err=sys.stderr):
        self.url = url
        self.session = session
        self.out = out
        self.err = err
        self._cond = threading.Condition()
        self._ws = None  # the current connection
        self._dropped = False  # ... and it is gone

    def run(self, stdin) -> int:
        """Chat until /quit or end of input; return the exit status."""
        try:
            ws = self._connect()
        except LINK_ERRORS as exc:
            print(f"roomchat client: cannot connect to {self.url}: {describe(exc)}", file=self.err, flush=True)
            return 1
        threading.Thread(target=self._read_input, args=(stdin,), name="stdin", daemon=True).start()
        while True:
            self._pump(ws)
            with self._cond:
                if self.session.done:
                    break
                self.session.disconnected()
                self._print([render.notice("connection lost; reconnecting")])
            ws = self._reconnect()
            if ws is None:
                break
        if ws is not None:
            with contextlib.suppress(*LINK_ERRORS):
                ws.close()
        return self._status()

    def _status(self) -> int:
        with self._cond:
            undelivered = self.session.undelivered()
            if undelivered:
                self._print([render.error(f"{undelivered} message(s) were not delivered.")])
            return 1 if undelivered or self.session.failed else 0

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self) -> websocket.WebSocket:
        """Open a connection, read `welcome`, and start the reader thread."""
        ws = websocket.create_connection(self.url, timeout=CONNECT_TIMEOUT, enable_multithread=True)
        try:
            welcome = json.loads(ws.recv())
        except ValueError:
            welcome = None
        except LINK_ERRORS:
            ws.close()
            raise
        if not isinstance(welcome, dict) or welcome.get("type") != "welcome" or "nick" not in welcome:
            ws.close()
            raise websocket.WebSocketException("the server did not answer with a roomchat welcome")
        ws.settimeout(IDLE_PING)
        with self._cond:
            self._ws, self._dropped = ws, False
            self._print(self.session.connected(welcome))
        threading.Thread(target=self._read_events, args=(ws,), name="reader", daemon=True).start()
        return ws

    def _reconnect(self) -> websocket.WebSocket | None:
        """Retry with backoff; None when quitting and nothing is left to deliver, or after QUIT_PATIENCE."""
        attempt, gave_up_at = 0, None
        while True:
            with self._cond:
                if self.session.quitting and gave_up_at is None:
                    gave_up_at = time.monotonic() + QUIT_PATIENCE
                if self.session.quitting and (not self.session.undelivered() or time.monotonic() > gave_up_at):
                    return None
                self._cond.wait(backoff(attempt))
            try:
                ws = self._connect()
            except LINK_ERRORS:
                attempt += 1
                continue
            with self._cond:
                self._print([render.notice("reconnected")])
            return ws

    # -- the three loops --------------------------------------------------------------------------

    def _pump(self, ws) -> None:
        """Send queued requests, paced, until the connection drops or the session is done."""
        pacer = Pacer.for_limits(self.session.limits)
        while True:
            with self._cond:
                while True:
                    if self._dropped or self.session.done:
                        return
                    delay = pacer.delay() if self.session.has_request() else None
                    if delay == 0:
                        break
                    self._cond.wait(delay)
                request = self.session.take_request()
                pacer.take()
            try:
                ws.send(json.dumps(request))
            except LINK_ERRORS:
                self._drop(ws)
                return

    def _read_events(self, ws) -> None:
        """Print every event; ping when the line is quiet, and call it a drop if that goes unanswered."""
        pinged = False
        while True:
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if pinged:
                    break
                pinged = True
                with contextlib.suppress(*LINK_ERRORS):
                    ws.send(json.dumps({"type": "ping"}))
                continue
            except (*LINK_ERRORS, ValueError):
                break
            pinged = False
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            try:
                event = json.loads(frame.data)
            except ValueError:
                continue
            with self._cond:
                self._print(self.session.on_event(event))
                self._cond.notify_all()
        with contextlib.suppress(*LINK_ERRORS):
            ws.close(timeout=0.5)
        self._drop(ws)

    def _read_input(self, stdin) -> None:
        for line in stdin:
            with self._cond:
                self._print(self.session.handle_line(line.rstrip("\r\n")))
                self._cond.notify_all()
                if self.session.quitting:
                    break
        with self._cond:
            self.session.quitting = True
            self._cond.notify_all()

    def _drop(self, ws) -> None:
        """Mark `ws` gone, unless a newer connection has replaced it (an old reader ends late)."""
        with self._cond:
            if ws is self._ws:
                self._dropped = True
            self._cond.notify_all()

    def _print(self, lines) -> None:
        for line in lines:
            print(line, file=self.out, flush=True)


def describe(exc: BaseException) -> str:
    """A connection failure in a few words, without a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for typed input)
    client = TerminalClient(normalize_url(args.url), Session(nick=args.nick, room=args.room))
    try:
        return client.run(sys.stdin)
    except KeyboardInterrupt:
        return 130
