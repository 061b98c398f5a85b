"""The websocket-server fixes, checked with raw bytes on a real socket (one test or more per fix)."""

import json
import logging
import socket
import struct
import threading
import time

import pytest
import websocket

from tests.helpers import RawClient, frame, http_exchange, wait_for

UPGRADE = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


# -- handshake -----------------------------------------------------------------------------------


def test_plain_get_gets_http_response(server):
    """A plain GET without Upgrade gets a valid HTTP response (the page), not a traceback."""
    response = http_exchange(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert b"Content-Type: text/html" in head and b"<html" in body.lower()


def test_handshake_missing_key_is_400(server):
    """An upgrade without Sec-WebSocket-Key is answered 400."""
    response = http_exchange(server.port, (UPGRADE + "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert response.startswith(b"HTTP/1.1 400 ")


def test_handshake_wrong_version_is_426(server):
    """An upgrade with another Sec-WebSocket-Version is answered 426 naming version 13."""
    request = UPGRADE + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    response = http_exchange(server.port, request.encode())
    assert response.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in response


def test_handshake_oversized_headers_is_431(server):
    """Request headers over 16 KiB are answered 431."""
    request = UPGRADE + "".join(f"X-Filler-{i}: {'a' * 100}\r\n" for i in range(200)) + "\r\n"
    assert http_exchange(server.port, request.encode()).startswith(b"HTTP/1.1 431 ")


MALFORMED = [b"\x16\x03\x01garbage\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"]


@pytest.mark.parametrize("request_bytes", MALFORMED)
def test_malformed_request_is_400_and_harms_nobody(server, connect, request_bytes):
    """A malformed request gets 400 and only its own connection ends."""
    peer = connect()
    assert http_exchange(server.port, request_bytes).startswith(b"HTTP/1.1 400 ")
    assert peer.request(type="ping") == {"type": "pong"}


def test_handshake_timeout_drops_slow_client(make_server):
    """A client that does not finish its handshake in time is disconnected."""
    server = make_server(handshake_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 3


def test_dribbling_handshake_is_cut_at_the_deadline(make_server):
    """A client sending one header byte at a time cannot stretch the handshake past the deadline."""
    server = make_server(handshake_timeout=0.6)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(100):
                sock.sendall(b"X")
                time.sleep(0.05)
        assert time.monotonic() - started < 3


def test_upstream_client_list_unused(server, connect):
    """Connections live in our registry; upstream's unlocked `clients` list stays empty."""
    connect()
    connect()
    assert server.registry.stats()["connections"] == 2
    assert server.transport.clients == []


# -- frames --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(0x1, b'{"type":"ping"}', masked=False), 1002),
        (frame(0x3, b""), 1002),
        (frame(0x1, b'{"type":"ping"}', rsv=4), 1002),
        (frame(0x9, b"x" * 126), 1002),
        (frame(0x9, b"x", fin=False), 1002),
        (frame(0x2, b"\x00\x01\x02"), 1003),
        (frame(0x1, b'{"type":"chat","text":"\xff"}'), 1007),
        (frame(0x1, "€".encode()[:1], fin=False) + frame(0x0, b"x"), 1007),
    ],
    ids=["unmasked", "opcode-3", "rsv1", "long-ping", "fragmented-ping", "binary", "bad-utf8", "bad-utf8-fragments"],
)
def test_bad_frames_close_with_code(raw, data, code):
    """Each protocol violation gets a close frame with its RFC 6455 code, then TCP closes."""
    client = raw()
    client.send(data)
    assert client.read_close() == code
    assert client.wait_eof()


def test_huge_length_closes_1009_at_once(raw):
    """A header claiming 2**62 bytes closes 1009 at once, without the server reading the payload
    (waiting for it, the client's 5 s timeout would fail the test)."""
    client = raw()
    client.send(frame(0x1, b"", length=2**62)[:14])
    assert client.read_close() == 1009


def test_one_mib_refused_60_kib_roundtrips(make_server, connect, raw):
    """A 1 MiB message closes 1009; a 60 KiB chat message goes out and comes back whole."""
    server = make_server(max_text_chars=70000)
    peer = connect(server.url)
    peer.join("r")
    text = "x" * (60 * 1024 - 100)
    peer.send(type="chat", room="r", text=text)
    assert peer.recv_type("chat")["text"] == text
    big = raw(server.port)
    big.send(frame(0x1, b"y" * (1024 * 1024)))
    assert big.read_close() == 1009


def test_fragmented_message_with_ping_between(raw):
    """Fragments are joined into one message; a ping between them gets its pong first."""
    client = raw()
    msg = json.dumps({"type": "ping", "id": "frag"}).encode()
    client.send(frame(0x1, msg[:5], fin=False) + frame(0x9, b"hello") + frame(0x0, msg[5:10], fin=False)
                + frame(0x0, msg[10:]))
    assert client.read_frame() == (0xA, b"hello")
    assert client.read_json() == {"type": "pong", "id": "frag"}


def test_close_is_echoed(raw):
    """A client's close frame is answered with a close frame carrying the same code."""
    client = raw()
    client.send(frame(0x8, struct.pack("!H", 1000) + b"bye"))
    assert client.read_close() == 1000
    assert client.wait_eof()


def test_binary_does_not_desync_other_clients(raw, connect):
    """After one client's binary frame is refused, other clients are unaffected."""
    peer = connect()
    bad = raw()
    bad.send(frame(0x2, b"\x00" * 10) + frame(0x1, b'{"type":"ping"}'))
    assert bad.read_close() == 1003
    assert peer.request(type="ping") == {"type": "pong"}


def test_deep_json_nesting_is_bad_json(raw):
    """60,000 nested brackets get bad_json, not a crashed thread."""
    client = raw()
    client.send(frame(0x1, b"[" * 60000))
    assert client.read_json()["code"] == "bad_json"
    client.send_json(type="ping")
    assert client.read_json() == {"type": "pong"}


# -- sending -------------------------------------------------------------------------------------


def test_large_message_arrives_whole_to_slow_reader(make_server, raw):
    """A 1.5 MB frame is written completely (upstream's send() could drop the tail)."""
    server = make_server(max_message_bytes=2_000_000, max_text_chars=2_000_000, max_outbox_bytes=8_000_000)
    receiver = raw(server.port)
    receiver.send_json(type="join", room="big")
    assert receiver.read_json()["type"] == "joined"
    sender = raw(server.port)
    sender.send_json(type="join", room="big")
    sender.read_json()
    text = "z" * 1_500_000
    sender.send_json(type="chat", room="big", text=text)
    time.sleep(0.5)  # the receiver is not reading: the kernel buffer fills and the rest is queued
    receiver.read_json()  # presence join of the sender
    event = receiver.read_json()
    assert event["type"] == "chat" and len(event["text"]) == 1_500_000


def test_server_answers_ping_with_same_payload(raw):
    """A client ping gets a pong with the same payload."""
    client = raw()
    client.send(frame(0x9, b"are you there"))
    assert client.read_frame() == (0xA, b"are you there")


def test_send_path_shared_by_threads_keeps_frames_whole(make_server):
    """Many threads sending to one client at once never interleave bytes inside a frame."""
    # the senders never read their own copies: a reply budget that holds them all, or they wait
    server = make_server(rate_burst=100000, rate_per_second=100000, max_text_chars=5000, max_reply_bytes=2**22)
    listener = websocket.create_connection(server.url, timeout=5)
    listener.recv()
    listener.send(json.dumps({"type": "join", "room": "r"}))
    senders = []
    for _ in range(4):
        ws = websocket.create_connection(server.url, timeout=5)
        ws.recv()
        ws.send(json.dumps({"type": "join", "room": "r"}))
        senders.append(ws)

    def blast(ws, tag):
        for i in range(100):
            ws.send(json.dumps({"type": "chat", "room": "r", "text": f"{tag}{i}" + "." * 3000}))

    threads = [threading.Thread(target=blast, args=(ws, t)) for t, ws in enumerate(senders)]
    for t in threads:
        t.start()
    seqs = []
    while len(seqs) < 400:
        event = json.loads(listener.recv())
        if event["type"] == "chat":
            seqs.append(event["seq"])
    for t in threads:
        t.join()
    assert seqs == list(range(1, 401))
    for ws in [listener, *senders]:
        ws.close()


# -- slow and dead clients -----------------------------------------------------------------------


def test_stalled_reader_is_closed_and_others_keep_pace(make_server, connect):
    """A member that stops reading is dropped with presence leave; the others get every message fast."""
    server = make_server(max_outbox_bytes=64 * 1024, rate_burst=100000, rate_per_second=100000, max_text_chars=5000)
    stalled = RawClient(server.port, rcvbuf=4096)
    stalled.send_json(type="join", room="r")
    sender, other = connect(server.url), connect(server.url)
    sender.join("r")
    other.join("r")
    gaps, presence = [], []
    last = time.monotonic()
    for i in range(400):
        sender.send(type="chat", room="r", text=f"{i:04d}" + "." * 2000)
        sender.recv_type("chat")
        while (event := other.recv())["type"] != "chat":
            presence.append(event)
        assert event["seq"] == i + 1
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert max(gaps) < 5  # blocked by the stalled one, a delivery would wait for its ping timeout (20 s)
    assert {"type": "presence", "room": "r", "event": "leave", "nick": stalled.welcome["nick"]} in presence
    assert stalled.read_close() == 1008  # after what the kernel held: the reason it was dropped
    wait_for(lambda: server.registry.stats()["connections"] == 2)
    stalled.close()


@pytest.mark.parametrize("interval, timeout", [(0.3, 0.3), (0.2, 0.5)])
def test_half_open_client_detected_by_ping(make_server, connect, interval, timeout):
    """A client that vanished without a close (never answers pings) is closed and leaves its rooms,
    also when the ping timeout is longer than the interval (one ping at a time)."""
    server = make_server(ping_interval=interval, ping_timeout=timeout)
    watcher = connect(server.url)
    watcher.join("r")
    ghost = RawClient(server.port)
    ghost.send_json(type="join", room="r")
    # The ghost never reads or answers; the watcher's websocket-client answers pings as it reads.
    started = time.monotonic()
    assert watcher.recv_type("presence")["event"] == "join"
    assert watcher.recv_type("presence")["event"] == "leave"
    assert time.monotonic() - started < 3
    assert watcher.request(type="ping") == {"type": "pong"}
    ghost.close()


def test_bad_clients_leak_no_threads(server, connect):
    """After a crowd of misbehaving clients has come and gone, no connection thread is left."""
    connect().request(type="ping")  # warm up the server's helper threads
    baseline = threading.active_count()
    abusers = [
        lambda: http_exchange(server.port, b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        lambda: http_exchange(server.port, b"\x00\x01\x02\r\n\r\n"),
    ]
    for n in range(20):
        abusers[n % 2]()
        client = RawClient(server.port)
        client.send([frame(0x2, b"x"), frame(0x1, b"\xff"), frame(0x1, b"", length=2**40)[:14], b""][n % 4])
        if n % 4 == 3:
            client.sock.shutdown(socket.SHUT_RDWR)  # half-closed mid-conversation
        client.close()
    # Both settle on their own (the last connection threads may still be finishing under load).
    wait_for(lambda: threading.active_count() <= baseline and server.registry.stats()["connections"] == 1,
             timeout=10)


def test_empty_continuation_flood_closes_1009(raw):
    """A message in endless empty fragments is cut off (1009), not buffered for ever."""
    client = raw()
    client.send(frame(0x1, b"", fin=False) + frame(0x0, b"", fin=False) * 2000)
    assert client.read_close() == 1009


def test_first_fragment_does_not_hold_back_earlier_request(raw):
    """A complete request followed by the first fragment of the next is answered at once."""
    client = raw()
    client.send(frame(0x1, b'{"type":"ping","id":1}') + frame(0x1, b'{"type":', fin=False))
    assert client.read_json() == {"type": "pong", "id": 1}
    client.send(frame(0x0, b'"ping","id":2}'))
    assert client.read_json() == {"type": "pong", "id": 2}


@pytest.mark.parametrize("request_bytes, status", [
    (UPGRADE.encode() + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", b"431"),
    (b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n", b"431"),
    (b"GET //[ HTTP/1.1\r\nHost: localhost\r\n\r\n", b"400"),
    (b"GET /static/" + b"n" * 300 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", b"404"),
])
def test_odd_requests_get_an_http_answer(server, request_bytes, status):
    """Odd but possible requests get a status line, never a traceback and silence."""
    assert http_exchange(server.port, request_bytes).startswith(b"HTTP/1.1 " + status)


def test_reset_right_after_handshake_logs_no_traceback(server, caplog):
    """Clients that reset the connection as soon as the handshake is done leave no ERROR logs."""
    request = (UPGRADE + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    for n in range(60):
        client = RawClient(server.port) if n % 2 else RawClient(server.port, handshake=False)
        if not n % 2:
            client.send(request)  # and reset before the 101 is written
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    wait_for(lambda: server.registry.stats()["connections"] == 0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_malformed_flood_is_rate_limited_then_closed(make_server, raw):
    """Malformed messages cost tokens too: over the burst they are rate_limited, then closed 1008."""
    server = make_server(rate_burst=3, rate_per_second=0.01)
    client = raw(server.port)
    client.send(frame(0x1, b"x") * 20)
    codes = [client.read_json()["code"] for _ in range(3 + 3 * 3)]
    assert codes == ["bad_json"] * 3 + ["rate_limited"] * 9
    assert client.read_close() == 1008


def test_close_without_status_code_is_logged_as_1005(server, raw, caplog):
    """A client close frame with no status code is echoed empty and logged as "no status code, 1005"
    (RFC 6455 7.1.5), not as None."""
    caplog.set_level(logging.INFO, logger="roomchat.transport")
    client = raw()
    client.send(frame(0x8, b""))
    assert client.read_frame() == (0x8, b"")
    assert client.wait_eof()
    wait_for(lambda: "client closed (no status code, 1005)" in caplog.text)
    assert "None" not in caplog.text
