"""What the selftest checks talk through: a connection that paces its requests to the server's
advertised rate, checks every message against schema/ and turns each surprise into CheckFailed.

Threads: a Probe and its connections belong to the thread running the check, except in a
check that hands one connection to each of its own threads (ordering); nothing here is shared.
"""

import contextlib
import itertools
import json
import secrets
import time
from collections import deque
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websocket

from chatclient.pacer import Pacer
from chatclient.schema import problems, validator

SSLOPT = None  # websocket-client's TLS options for wss:// (selftest's --cafile sets them)
MINT = None  # nick -> a signed token for it (selftest's --token-secret-file sets it); None: no tokens
TOKEN_TTL = 600  # seconds a minted token is valid: longer than any run


class CheckFailed(Exception):
    """The server did something protocol v1 does not allow; the message says what."""


class Skip(Exception):
    """This check cannot run against this server (its limits make it impractical); says why."""


class Conn:
    """One WebSocket connection: `welcome` is read and checked on connect.

    `request()` sends with a fresh id and returns the reply carrying that id; events without an
    id that arrive meanwhile (broadcasts) wait in `pending` for `expect()`. Every event read is
    validated against schema/events.json, every request sent against schema/requests.json.

    Raises CheckFailed on a schema violation, a timeout (`timeout` seconds per event) or a close.
    """

    def __init__(self, url: str, timeout: float, label: str):
        self.label = label
        self.timeout = timeout
        shown = url.split("?", 1)[0]  # never a token in a line
        try:
            self.ws = websocket.create_connection(url, timeout=timeout, sslopt=SSLOPT)
        except websocket.WebSocketBadStatusException as exc:
            raise CheckFailed(f"{label}: cannot connect to {shown}: {refusal(exc)}") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise CheckFailed(f"{label}: cannot connect to {shown}: {exc}") from None
        self.pending: deque = deque()
        self._ids = itertools.count(1)
        self.welcome = self._read("welcome")
        if self.welcome["type"] != "welcome":
            raise CheckFailed(f"{label}: first frame is {self.welcome['type']!r}, not welcome")
        self.nick = self.welcome["nick"]
        self.limits = self.welcome["limits"]
        self._pacer = Pacer.for_limits(self.limits)

    # -- sending ------------------------------------------------------------------------------

    def send(self, **msg) -> None:
        """Send a request that must be valid (paced to the server's rate)."""
        found = problems(validator("requests"), msg)
        if found:  # a bug in the selftest itself, not in the server
            raise AssertionError(f"selftest sent an invalid request {msg}: {found}")
        self.send_raw(json.dumps(msg, ensure_ascii=False))

    def send_raw(self, text: str, paced: bool = True) -> None:
        """Send any text frame, valid or not; `paced=False` ignores the rate (to provoke rate_limited)."""
        if paced:
            wait = self._pacer.delay()
            if wait:
                time.sleep(wait)
        self._pacer.take()
        try:
            self.ws.send(text)
        except (OSError, websocket.WebSocketException) as exc:
            raise CheckFailed(f"{self.label}: send failed: {exc}") from None

    def next_id(self) -> int:
        return next(self._ids)

    # -- receiving -----------------------------------------------------------------------------

    def _read(self, waiting_for: str) -> dict:
        """The next event from the socket, validated."""
        try:
            opcode, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            raise CheckFailed(f"{self.label}: nothing in {self.timeout:g} s while waiting for {waiting_for}") from None
        except websocket.WebSocketConnectionClosedException:
            raise CheckFailed(f"{self.label}: connection closed while waiting for {waiting_for}") from None
        except OSError as exc:
            raise CheckFailed(f"{self.label}: {exc} while waiting for {waiting_for}") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            raise CheckFailed(f"{self.label}: server closed ({code}) while waiting for {waiting_for}")
        if opcode != websocket.ABNF.OPCODE_TEXT:
            raise CheckFailed(f"{self.label}: got opcode {opcode}, not a text frame")
        try:
            event = json.loads(data)
        except ValueError:
            raise CheckFailed(f"{self.label}: a frame that is not JSON: {data[:80]!r}") from None
        found = problems(validator("events"), event)
        if found:
            raise CheckFailed(f"{self.label}: {str(event.get('type', 'an'))!r} event breaks the schema: {found[0]}")
        return event

    def recv(self, waiting_for: str = "an event") -> dict:
        """The next event: one set aside by `request()` first, else from the socket."""
        return self.pending.popleft() if self.pending else self._read(waiting_for)

    def expect(self, kind: str, **fields) -> dict:
        """The next event of `kind` whose fields equal `fields`; events of other kinds are passed
        over (a broadcast may come first), but one of `kind` that differs fails the check."""
        wanted = f"{kind} {fields}" if fields else kind
        while True:
            event = self.recv(wanted)
            if event["type"] != kind:
                continue
            wrong = {k: event.get(k) for k, v in fields.items() if event.get(k) != v}
            if wrong:
                raise CheckFailed(f"{self.label}: expected {wanted}, got {kind} with {wrong}")
            return event

    def request(self, reply: str, **msg) -> dict:
        """Send `msg` with a new id; the next event carrying an id must be the reply to it, of
        type `reply`. Returns it."""
        msg_id = msg["id"] = self.next_id()
        self.send(**msg)
        return self.reply_to(msg_id, reply)

    def reply_to(self, msg_id, reply: str | tuple) -> dict:
        """Read up to the event carrying `msg_id` (setting broadcasts aside); its type must be
        `reply` (or one of them)."""
        while True:
            event = self._read(f"the reply to request {msg_id}")
            if "id" not in event:
                self.pending.append(event)
                continue
            if event["id"] != msg_id:
                raise CheckFailed(f"{self.label}: reply carries id {event['id']!r}, expected {msg_id!r}")
            if event["type"] not in ((reply,) if isinstance(reply, str) else reply):
                detail = f" ({event.get('code')}: {event.get('message')!r})" if event["type"] == "error" else ""
                raise CheckFailed(f"{self.label}: expected {reply} in reply, got {event['type']}{detail}")
            return event

    def refused(self, code: str, raw: str, msg_id=None) -> dict:
        """Send `raw` (a text frame, often malformed on purpose); the reply must be an error with
        `code` carrying `msg_id` (when the request had a valid one), and the connection must stay
        open: a ping after it still gets its pong."""
        self.send_raw(raw)
        while True:
            event = self._read(f"error {code}")
            if event["type"] == "error" or "id" in event:
                break
            self.pending.append(event)
        if event["type"] != "error":
            raise CheckFailed(f"{self.label}: expected error {code}, got {event['type']}")
        if event["code"] != code:
            raise CheckFailed(f"{self.label}: expected error {code}, got {event['code']} ({event['message']!r})")
        if event.get("id") != msg_id:
            raise CheckFailed(f"{self.label}: error {code} carries id {event.get('id')!r}, expected {msg_id!r}")
        self.request("pong", type="ping")  # the connection stays open
        return event

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=1)


def refusal(exc: websocket.WebSocketBadStatusException) -> str:
    """The server's refusal of the upgrade in one line: HTTP status and the first line of its body,
    with what to do about a 401 (never the raw headers)."""
    body = exc.resp_body.decode("utf-8", "replace") if isinstance(exc.resp_body, bytes) else str(exc.resp_body or "")
    first = body.strip().splitlines()[0] if body.strip() else ""
    line = f"HTTP {exc.status_code}" + (f": {first[:200]}" if first else "")
    if exc.status_code == 401 and MINT is None:
        line += " (give selftest --token-secret-file FILE, the server's secret, to check a --require-token server)"
    return line


def with_token(url: str, token: str) -> str:
    """`url` with `token=` in its query (replacing any there), other parameters kept."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("token", token)])))


class Probe:
    """What one check gets: connections it opens (all closed when it ends) and names unique
    to this run, so checks do not meet each other or a live server's users."""

    def __init__(self, url: str, timeout: float, tag: str | None = None, op_token: str | None = None):
        self.url = url
        self.timeout = timeout
        self.op_token = op_token
        self.tag = tag or secrets.token_hex(3)
        self._names = itertools.count(1)
        self.conns: list[Conn] = []
        self._identity = None  # identity_url(), once made

    def connect(self, label: str | None = None) -> Conn:
        """A new connection (with a token minted for a fresh nick when MINT is set)."""
        url = self.url if MINT is None else with_token(self.url, MINT(self.name("t")))
        conn = Conn(url, self.timeout, label or f"conn{len(self.conns) + 1}")
        self.conns.append(conn)
        return conn

    def connect_op(self, label: str = "operator") -> Conn:
        """A connection with the operator's token (`--op-token`). Raises Skip without one."""
        op_token = self.op_token or (MINT(self.name("op"), op=True) if MINT is not None else None)
        if not op_token:
            raise Skip("needs an operator's token: give --op-token (roomchat.py token --nick NICK --op) "
                       "or --token-secret-file")
        url = f"{self.url}{'&' if '?' in self.url else '?'}token={op_token}"
        conn = Conn(url, self.timeout, label)
        self.conns.append(conn)
        return conn

    def identity_url(self) -> str:
        """The address of one identity for this check (the operator's token, or a token minted for a
        fresh nick), to connect as it again. Raises Skip without a token to use."""
        if self._identity is None:
            if self.op_token:
                self._identity = with_token(self.url, self.op_token)
            elif MINT is not None:
                self._identity = with_token(self.url, MINT(self.name("id")))
            else:
                raise Skip("needs a token: give --op-token or --token-secret-file")
        return self._identity

    def connect_url(self, url: str, label: str) -> Conn:
        """A new connection to `url` (e.g. identity_url())."""
        conn = Conn(url, self.timeout, label)
        self.conns.append(conn)
        return conn

    def skip_with_tokens(self) -> None:
        """Raises Skip when connections carry minted tokens: a token holder's nick is the token's,
        so nick requests are refused (`forbidden`) by design."""
        if MINT is not None:
            raise Skip("with tokens every nick comes from its token, so nick changes are refused by design")

    def name(self, what: str) -> str:
        """A fresh nick or room name, e.g. `st3a9f07-room4` (valid as both, at most 32 characters)."""
        return f"st{self.tag}-{what}{next(self._names)}"

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()
