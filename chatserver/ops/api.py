"""The HTTP API for bots and scripts, on the WebSocket port (PROTOCOL.md, HTTP API).

    POST /api/rooms/ROOM/messages   {"text": T}             -> 201, the chat event (with its seq)
    GET  /api/rooms/ROOM/messages?after=S&limit=N (or before=S) -> 200, {"room": R, "messages": [...]}

Both need `Authorization: Bearer TOKEN`, an identity token as `roomchat.py token` mints (the
token's `sub` is the nick the chat is from); ROOM is percent-encoded (`%23team` for `#team`). A
post goes through the registry like a connection's chat (`Registry.post`: the room's rules for
the nick, the room's stream, every member on every process) and is answered once stored. The
transport has read the body already (Content-Length only, at most max_message_bytes, within the
handshake timeout: transport/server.py `_answer_http`).

Rates: each request costs one token of its address's bucket (address_rate_burst,
address_rate_per_second) and, once its token is verified, one of its identity's (rate_burst,
rate_per_second): the numbers of a connection, in buckets of the API's own.

Every answer is one line of JSON; all but 201 and 200 are `{"error": {"code": C, "message": M}}`
with the protocol's error codes (ERROR_STATUS maps them to statuses), or one of HTTP_CODES for
what only HTTP has.
Runs on the connection's thread; holds no lock of its own (the rate books have theirs).
"""

import json
import math
from urllib.parse import parse_qs, unquote, urlsplit

from chatserver import protocol
from chatserver.errors import ChatError
from chatserver.wire.handshake import SECURITY_HEADERS

PREFIX = "/api/"
JSON = "application/json"
ERROR_STATUS = {  # a protocol error code -> the HTTP status it is answered with (others: 400)
    "bad_token": 401, "forbidden": 403, "moderated": 403, "too_long": 413, "rate_limited": 429, "slow_mode": 429,
    "unavailable": 503,
}
HTTP_CODES = {  # what only HTTP has: status -> the `code` of its error answer
    404: "not_found", 405: "method_not_allowed", 411: "length_required",
}


class Api:
    """Answers requests under /api/. `registry`: the Registry (post, read_room); `identities`:
    rooms.identity.Identities (verify); `addresses` and `holders`: rooms.budgets.RateBook, per
    address and per identity; `max_text_chars`: the chat text limit."""

    def __init__(self, registry, identities, addresses, holders, max_text_chars: int):
        self._registry = registry
        self._identities = identities
        self._addresses = addresses
        self._holders = holders
        self._max_text_chars = max_text_chars

    @staticmethod
    def handles(target: str) -> bool:
        """True for a request target under /api/."""
        return target.startswith(PREFIX)

    def respond(self, request, address: str, refused=None) -> tuple[int, dict, bytes]:
        """(status, headers, body) for a request (wire.handshake.Request, its body read) from
        `address`; `refused`: the HandshakeError when the transport refused its body."""
        try:
            return self._route(request, address, refused)
        except ChatError as exc:
            self._registry.metrics.error(protocol.error(exc))  # counted with the connections' errors
            if exc.code == "rate_limited":
                self._registry.metrics.rate_limited.inc()
            return error_answer(exc, token_sent="authorization" in request.headers)

    def _route(self, request, address: str, refused) -> tuple[int, dict, bytes]:
        try:
            url = urlsplit(request.target)
        except ValueError:
            raise ChatError("bad_message", "That request target is not a URL.") from None
        parts = url.path[len(PREFIX):].split("/")
        if len(parts) != 3 or parts[0] != "rooms" or parts[2] != "messages":
            return http_error(404, "No such API path; use /api/rooms/ROOM/messages.")
        if request.method not in ("GET", "POST"):
            return http_error(405, "Use GET (read) or POST (send) here.", {"Allow": "GET, POST"})
        if refused is not None:
            if refused.status in HTTP_CODES:
                return http_error(refused.status, refused.reason)
            raise ChatError("too_long" if refused.status == 413 else "bad_message", f"The body was refused: "
                                                                                       f"{refused.reason}.")
        room = protocol.require_room({"room": unquote(parts[1])})
        self._charge(self._addresses, address, "your address")
        identity = self._identity(request.headers.get("authorization", ""))
        self._charge(self._holders, protocol.fold_nick(identity.nick), identity.nick)
        if request.method == "POST":
            text = protocol.require_text(_json_object(request.body), self._max_text_chars)
            event = self._registry.post(identity, room, text)
            return 201, {"Content-Type": JSON, "Cache-Control": "no-store", **SECURITY_HEADERS}, json.dumps(
                event, ensure_ascii=False).encode() + b"\n"
        query = _query(url.query)
        before, after = protocol.optional_seq(query, "before"), protocol.optional_seq(query, "after")
        body = self._registry.read_room(identity, room, before=before, after=after, limit=protocol.history_limit(query))
        return 200, {"Content-Type": JSON, "Cache-Control": "no-store", **SECURITY_HEADERS}, body + b"\n"

    def _identity(self, authorization: str):
        """The verified identity of an `Authorization: Bearer TOKEN` header. Raises ChatError bad_token."""
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ChatError("bad_token", "Send your token: Authorization: Bearer <token> (`roomchat.py token` "
                                         "mints one).")
        return self._identities.verify(token.strip())

    def _charge(self, book, key: str, whose: str) -> None:
        """One token of `key`'s bucket. Raises ChatError rate_limited with retry_after."""
        wait = book.take(key)
        if wait:
            raise ChatError("rate_limited", f"Slow down: {whose} may make at most {book.rate:g} requests per "
                                            "second here.", retry_after=max(1, math.ceil(wait)))


def _json_object(body: bytes) -> dict:
    """The body as a JSON object, as strictly as a WebSocket message (protocol.parse_json).
    Raises ChatError bad_json, bad_message."""
    value = protocol.parse_json(body, "The body must be a JSON object such as {\"text\": \"hi\"} (UTF-8).")
    if not isinstance(value, dict):
        raise ChatError("bad_message", "The body must be a JSON object such as {\"text\": \"hi\"}.")
    return value


def _query(query: str) -> dict:
    """The query's `after`, `before` and `limit` as integers where they are (else as given, for
    the protocol's checks to refuse). Raises ChatError bad_message for a repeated one."""
    out = {}
    for name, values in parse_qs(query).items():
        if name not in ("after", "before", "limit"):
            continue
        if len(values) > 1:
            raise ChatError("bad_message", f"Give {name!r} once.")
        out[name] = int(values[0]) if values[0].isascii() and values[0].isdigit() and len(values[0]) < 20 \
            else values[0]
    return out


def error_answer(exc: ChatError, token_sent: bool = True) -> tuple[int, dict, bytes]:
    """The answer to a refused request: its status (ERROR_STATUS), `Retry-After` when the error
    says when to try again, `WWW-Authenticate` for a token problem (RFC 6750 section 3: with
    error="invalid_token" when one was sent)."""
    status = ERROR_STATUS.get(exc.code, 400)
    headers = {}
    if "retry_after" in exc.fields and status in (429, 503):
        headers["Retry-After"] = str(exc.fields["retry_after"])
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="roomchat"' + (', error="invalid_token"' if token_sent else "")
    return _answer(status, {"code": exc.code, "message": exc.message, **exc.fields}, headers)


def http_error(status: int, message: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """An answer for what only HTTP has (HTTP_CODES)."""
    return _answer(status, {"code": HTTP_CODES[status], "message": message}, headers or {})


def _answer(status: int, error: dict, headers: dict) -> tuple[int, dict, bytes]:
    body = json.dumps({"error": error}, ensure_ascii=False).encode() + b"\n"  # a line of its own in a terminal
    return status, {"Content-Type": JSON, "Cache-Control": "no-store", **SECURITY_HEADERS, **headers}, body
