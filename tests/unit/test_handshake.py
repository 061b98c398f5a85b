"""The opening handshake on bytes alone: request head in, response bytes out (no sockets)."""

import io

import pytest

from chatserver.errors import HandshakeError
from chatserver.wire import handshake

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3 / 4.2.2's example
UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"
)


def parse(data: bytes) -> handshake.Request:
    return handshake.read_request(io.BytesIO(data).readline)


def answer(data: bytes, policy: handshake.Policy = handshake.ACCEPT_ALL) -> bytes:
    """What the server sends for `data`: the 101, or the refusal's bytes."""
    try:
        request = parse(data)
        handshake.admit(request, policy)
        return handshake.accept(request, policy)
    except HandshakeError as exc:
        return handshake.refusal(exc)


def refusing(status: int, reason: str):
    """A policy check that refuses every request with `status`."""

    def check(request):
        raise HandshakeError(status, reason)

    return check


def test_rfc_example_key_gets_its_accept_value():
    """The RFC 6455 4.2.2 example: key dGhlIHNhbXBsZSBub25jZQ== is answered s3pPLMBiTxaQ9kYGzzhZRbK+xOo=."""
    assert answer(UPGRADE + b"\r\n") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


def test_request_head_is_parsed_with_lower_case_names_and_joined_repeats():
    """Method, target and headers come out of the head; repeated fields are joined with ", "."""
    request = parse(b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody not read")
    assert (request.method, request.target) == ("GET", "/x?y=1")
    assert request.headers == {"host": "h", "x-a": "1, 2"}
    assert not request.is_upgrade and parse(UPGRADE + b"\r\n").is_upgrade


def test_connection_header_may_list_other_tokens():
    """`Connection: keep-alive, Upgrade` (as Firefox sends it) is accepted."""
    data = UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade") + b"\r\n"
    assert answer(data).startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"])
def test_head_cut_short_is_eof(data):
    """A peer that leaves before the blank line raises EOFError (nothing to answer)."""
    with pytest.raises(EOFError):
        parse(data)


@pytest.mark.parametrize(
    "data, status, reason",
    [
        (b"GARBAGE\r\n\r\n", 400, b"malformed request line"),
        (b"GET /\r\n\r\n", 400, b"malformed request line"),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400, b"malformed request line"),
        (b"GET  HTTP/1.1\r\n\r\n", 400, b"malformed request line"),
        (b"\x16\x03\x01garbage\r\n\r\n", 400, b"malformed request line"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400, b"malformed header line"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, b"malformed header line"),
        (UPGRADE.replace(b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n", b"") + b"\r\n", 400,
         b"missing or invalid Sec-WebSocket-Key"),
        (UPGRADE.replace(KEY.encode(), b"c2hvcnQ=") + b"\r\n", 400, b"missing or invalid Sec-WebSocket-Key"),
        (UPGRADE.replace(KEY.encode(), b"not base64 at all!!") + b"\r\n", 400,
         b"missing or invalid Sec-WebSocket-Key"),
        (UPGRADE.replace(KEY.encode(), "é".encode("latin-1") * 24) + b"\r\n", 400,
         b"missing or invalid Sec-WebSocket-Key"),
        (UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive") + b"\r\n", 400,
         b"Connection header must include Upgrade"),
        (UPGRADE.replace(b"GET ", b"POST ") + b"\r\n", 405, b"a WebSocket upgrade must use GET"),
        (UPGRADE.replace(b"Version: 13", b"Version: 8") + b"\r\n", 426, b"unsupported WebSocket version; use 13"),
        (b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n", 431, b"request line too long"),
        (UPGRADE + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n", 431,
         b"request header fields too large"),
        (UPGRADE + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431,
         b"too many request header fields"),
    ],
    ids=["garbage", "no-version", "four-parts", "empty-target", "tls-hello", "no-colon", "folded",
         "no-key", "short-key", "bad-base64", "non-ascii-key", "no-connection-upgrade", "post", "version-8",
         "long-line", "big-head", "many-headers"],
)
def test_each_refusal_has_its_status_and_reason(data, status, reason):
    """Every refusal is a complete response: status line, length, close, plain-text reason."""
    response = answer(data)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), response[:80]
    assert b"\r\nConnection: close\r\n" in head + b"\r\n"
    assert b"Content-Type: text/plain; charset=utf-8" in head
    assert b"Content-Length: %d" % len(body) in head
    assert body == reason + b"\n"


def test_refusals_say_what_would_be_accepted():
    """405 carries `Allow: GET`; 426 carries `Sec-WebSocket-Version: 13` (RFC 6455 4.4)."""
    assert b"\r\nAllow: GET\r\n" in answer(UPGRADE.replace(b"GET ", b"PUT ") + b"\r\n")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer(UPGRADE.replace(b"13", b"7") + b"\r\n")


def test_host_check_refuses_every_request_and_origin_check_only_upgrades():
    """The policy's Host check runs in admit() for HTTP and upgrades alike; its Origin check runs in
    accept(), after the RFC 6455 checks, so a bad version is still 426."""
    bad_host = handshake.Policy(check_host=refusing(400, "unknown host"))
    assert answer(UPGRADE + b"\r\n", bad_host).startswith(b"HTTP/1.1 400 ")
    with pytest.raises(HandshakeError):
        handshake.admit(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), bad_host)
    bad_origin = handshake.Policy(check_origin=refusing(403, "origin not allowed"))
    assert answer(UPGRADE + b"\r\n", bad_origin).startswith(b"HTTP/1.1 403 ")
    handshake.admit(parse(b"GET / HTTP/1.1\r\nOrigin: http://evil\r\n\r\n"), bad_origin)  # plain HTTP: no check
    assert answer(UPGRADE.replace(b"13", b"8") + b"\r\n", bad_origin).startswith(b"HTTP/1.1 426 ")


def test_response_counts_the_body_and_leaves_it_out_for_head():
    """response() writes Content-Length and Connection: close first; head_only keeps the length."""
    full = handshake.response(200, {"Content-Type": "text/html"}, b"<html>")
    assert full == (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n"
                    b"Content-Type: text/html\r\n\r\n<html>")
    assert handshake.response(200, {"Content-Type": "text/html"}, b"<html>", head_only=True) == full[:-6]


def body_status(head: bytes, limit: int = 100):
    """The body length `head` announces, or the status it is refused with."""
    try:
        return handshake.body_length(parse(head + b"\r\n"), limit)
    except HandshakeError as exc:
        return exc.status


@pytest.mark.parametrize(("head", "expected"), [
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 12\r\n", 12),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 0\r\n", 0),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 100\r\n", 100),
    (b"GET / HTTP/1.1\r\n", 0),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n", 5),
    (b"POST /api/x HTTP/1.1\r\n", 411),
    (b"PUT /api/x HTTP/1.1\r\n", 411),
    (b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", 411),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", 411),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 101\r\n", 413),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n", 400),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n", 400),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: -1\r\n", 400),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: 1e3\r\n", 400),
    (b"POST /api/x HTTP/1.1\r\nContent-Length: \xd9\xa1\r\n", 400),
])
def test_body_length_takes_one_content_length_within_the_limit(head, expected):
    """A body needs one decimal Content-Length (400 otherwise) within the limit (413), never chunks
    (411); POST and PUT must give one (411), other methods without one have none."""
    assert body_status(head) == expected


def test_body_length_expect_continue():
    """`Expect: 100-continue` is recognised, in any case."""
    assert handshake.expects_continue(parse(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n"))
    assert not handshake.expects_continue(parse(b"POST / HTTP/1.1\r\n\r\n"))
