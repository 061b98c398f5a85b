"""The opening handshake, with no sockets: request head in, response bytes out.

`read_request(readline)` parses an HTTP/1.1 request head (RFC 9112 section 2-5) with the standard
library. Then, for every request, `admit(request, policy)` applies the checks that hold for plain
HTTP and WebSocket alike (the Host allow-list: 400); a WebSocket upgrade goes on to
`accept(request, policy)`, which checks RFC 6455 section 4.2.1 and the Origin (403) and returns the
101 response of section 4.2.2. Every refusal is a `HandshakeError(status, reason, headers)`, and
`refusal(error)` turns it into the bytes to send; `response()` builds any other HTTP answer.

Modelled on websockets' `http11.Request.parse` and `ServerProtocol.accept`/`reject`, and tested
like them by feeding bytes and reading bytes (tests/unit/test_handshake.py).
"""

import base64
import hashlib
import http.client
import io
from collections.abc import Callable
from dataclasses import dataclass, field

from chatserver.errors import HandshakeError

MAX_REQUEST_HEAD = 16 * 1024  # bytes, request line and header fields together
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
TEXT = "text/plain; charset=utf-8"
# On every HTTP answer (ops/web.py gives the chat page its own Content-Security-Policy): nothing may
# frame it, sniff another type into it, or learn from a Referer where the user came from.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Request:
    """An HTTP request head. `headers` has lower-case names; a repeated field's values are joined
    with ", " (RFC 9110 section 5.3). `scheme` is how the client reached us ("http" or "https"),
    which the transport knows and the head does not say."""

    method: str
    target: str
    headers: dict = field(default_factory=dict)
    scheme: str = "http"
    body: bytes = b""  # a plain HTTP request's body (`body_length` says how long), read by the transport

    @property
    def is_upgrade(self) -> bool:
        """The client asks for a WebSocket (an `Upgrade` header naming websocket)."""
        return "websocket" in self.headers.get("upgrade", "").lower()


def _accept_any(request: Request) -> None:
    """The check that lets every request through."""


@dataclass(frozen=True)
class Policy:
    """The checks that depend on how the server is exposed; each raises HandshakeError to refuse.

    `check_host` runs on every request (HTTP and WebSocket: 400 for a Host not served);
    `check_origin` on WebSocket upgrades only (403 for a page of another origin). wire/exposure.py
    builds them from the settings; the defaults accept everything.
    """

    check_host: Callable[[Request], None] = _accept_any
    check_origin: Callable[[Request], None] = _accept_any


ACCEPT_ALL = Policy()  # no Host or Origin check: every request passes them


def read_request(readline: Callable[[int], bytes], scheme: str = "http") -> Request:
    """Read a request line and header fields through `readline(limit)` (a line ending in LF, at
    most `limit` bytes, b"" at EOF), all of it at most MAX_REQUEST_HEAD bytes; `scheme` is how
    the client reached us (the head does not say).

    Follows RFC 9112 sections 3 (request line) and 5 (field lines; obsolete line folding is refused).
    Raises:
        HandshakeError: 400 for a malformed request line or header line, 431 for a head over
            MAX_REQUEST_HEAD bytes or over 100 header lines (RFC 6585 section 5).
        EOFError: the peer closed before the head was complete.
    """
    line = readline(MAX_REQUEST_HEAD + 1)
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
        line = readline(MAX_REQUEST_HEAD + 1 - total)
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
    return Request(parts[0], parts[1], headers, scheme)


def admit(request: Request, policy: Policy = ACCEPT_ALL) -> None:
    """The checks every request passes before it is answered, as HTTP or as an upgrade.

    Raises:
        HandshakeError: 400 when `policy.check_host` refuses the Host (RFC 9110 section 7.2).
    """
    policy.check_host(request)


BODY_METHODS = ("POST", "PUT", "PATCH")  # methods whose request must say how long its body is
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # RFC 9110 section 15.2.1


def body_length(request: Request, limit: int) -> int:
    """How many bytes of body follow a plain HTTP request's head (RFC 9112 section 6.3): its
    Content-Length, or 0 when a method other than POST, PUT or PATCH gives none. Bodies are
    accepted with a Content-Length only, at most `limit` bytes.

    Raises:
        HandshakeError: 411 for a body in chunks (any Transfer-Encoding) or a POST, PUT or PATCH
            without Content-Length; 400 for a Content-Length that is not one decimal number
            (repeated with another value, say); 413 for one over `limit`.
    """
    headers = request.headers
    if "transfer-encoding" in headers:
        raise HandshakeError(411, "send the body with a Content-Length, not in chunks (Transfer-Encoding)")
    value = headers.get("content-length")
    if value is None:
        if request.method in BODY_METHODS:
            raise HandshakeError(411, f"a {request.method} needs a Content-Length")
        return 0
    values = {v.strip() for v in value.split(",")}  # a repeated field arrives joined with ", "
    length = values.pop() if len(values) == 1 else ""
    if not (length.isdigit() and length.isascii() and len(length) <= 18):
        raise HandshakeError(400, "malformed Content-Length")
    if int(length) > limit:
        raise HandshakeError(413, f"the body is over {limit} bytes")
    return int(length)


def expects_continue(request: Request) -> bool:
    """The client waits for `100 Continue` before it sends the body (RFC 9110 section 10.1.1)."""
    return request.headers.get("expect", "").strip().lower() == "100-continue"


def accept(request: Request, policy: Policy = ACCEPT_ALL) -> bytes:
    """Check a WebSocket opening request (RFC 6455 section 4.2.1) and return the 101 response
    that accepts it (section 4.2.2). Call `admit` first.

    Raises:
        HandshakeError: 405 for a method other than GET (with `Allow: GET`), 426 for a
            Sec-WebSocket-Version other than 13 (with `Sec-WebSocket-Version: 13`, section 4.4),
            400 for a missing or invalid Sec-WebSocket-Key or a Connection header without
            Upgrade, 403 when `policy.check_origin` refuses the Origin (section 4.2.2, step 4).
    """
    headers = request.headers
    if request.method != "GET":
        raise HandshakeError(405, "a WebSocket upgrade must use GET", {"Allow": "GET"})
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError(426, "unsupported WebSocket version; use 13", {"Sec-WebSocket-Version": "13"})
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error, or a key that is not ASCII
        valid = False
    if not valid:
        raise HandshakeError(400, "missing or invalid Sec-WebSocket-Key")
    if "upgrade" not in headers.get("connection", "").lower():
        raise HandshakeError(400, "Connection header must include Upgrade")
    policy.check_origin(request)
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)), RFC 6455 section 4.2.2."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def response(status: int, headers: dict, body: bytes, head_only: bool = False) -> bytes:
    """An HTTP/1.1 response (RFC 9112 section 4) that closes the connection after it: status line,
    `Content-Length`, `Connection: close`, then `headers` and the body (left out for HEAD, whose
    Content-Length still counts it, RFC 9110 section 9.3.2). Header values must be Latin-1."""
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Unknown')}"]
    headers = {"Content-Length": str(len(body)), "Connection": "close", **headers}
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def refusal(error: HandshakeError) -> bytes:
    """The response for a refused request: its status, its extra headers and SECURITY_HEADERS, and
    the reason as text."""
    headers = {"Content-Type": TEXT, **SECURITY_HEADERS, **error.headers}
    return response(error.status, headers, error.reason.encode() + b"\n")
