"""TLS on the WebSocket port (--certfile/--keyfile): wss:// and https:// with a CA made at test time."""

import http.client
import json
import socket
import ssl
import struct
import time

import pytest
import websocket

from tests.helpers import http_exchange, run_to_exit, upgrade_request, wait_for


def client_context(tls_files) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tls_files.ca)


def sslopt(tls_files) -> dict:
    return {"sslopt": {"ca_certs": tls_files.ca}}


def test_url_is_wss_and_two_clients_chat(tls_server, peers, tls_files):
    """A TLS server's URL is wss://; two websocket-client sessions that trust the test CA chat
    through it (their Origin is https://host:port, the server's own)."""
    assert tls_server.url.startswith("wss://127.0.0.1:")
    alice, bob = (peers(tls_server.url, **sslopt(tls_files)) for _ in range(2))
    alice.join("lobby")
    bob.join("lobby")
    alice.send(type="chat", room="lobby", text="over TLS")
    assert bob.recv_type("chat")["text"] == "over TLS"
    assert alice.recv_type("chat")["seq"] == 1


def test_https_serves_the_page_with_its_headers(tls_server, tls_files):
    """GET / over https returns the chat page with a CSP that allows wss:// to this host."""
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, timeout=5, context=client_context(tls_files))
    conn.request("GET", "/")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200 and b"<html" in body.lower()
    assert f"wss://127.0.0.1:{tls_server.port}" in response.getheader("Content-Security-Policy")
    assert response.getheader("X-Frame-Options") == "DENY"


@pytest.mark.parametrize("request_bytes", [b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", upgrade_request("127.0.0.1")],
                         ids=["http", "ws"])
def test_plain_bytes_to_a_tls_port_get_a_clear_400(tls_server, peers, tls_files, request_bytes):
    """http:// or ws:// sent to a TLS port gets a plain-text 400 saying to use https:// or wss://,
    and the connections already there carry on."""
    peer = peers(tls_server.url, **sslopt(tls_files))
    response = http_exchange(tls_server.port, request_bytes)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert response.endswith(b"\r\n\r\nthis port speaks TLS: use https:// or wss://\n")
    assert peer.request(type="ping") == {"type": "pong"}


def test_other_scheme_origin_is_403_over_tls(tls_server, tls_files):
    """Over TLS the server's own origin is https://host:port: an http:// page of the same host is another origin."""
    host = f"127.0.0.1:{tls_server.port}"
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(tls_server.url, timeout=5, origin=f"http://{host}", **sslopt(tls_files))
    assert info.value.status_code == 403


def test_slow_tls_client_blocks_nobody_and_is_cut_at_the_deadline(make_server, tls_files, peers):
    """A client that opens TCP and never finishes its TLS handshake does not hold up other
    connections (the handshake runs on its own thread) and is cut at handshake_timeout."""
    server = make_server(certfile=tls_files.cert, keyfile=tls_files.key, handshake_timeout=3.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as silent, \
            socket.create_connection(("127.0.0.1", server.port), timeout=15) as dribbling:
        dribbling.sendall(b"\x16\x03\x01\x02")  # the start of a ClientHello, and nothing more
        started = time.monotonic()
        peer = peers(server.url, **sslopt(tls_files))
        assert peer.request(type="ping") == {"type": "pong"}
        assert time.monotonic() - started < 3.0  # answered before the others were cut: not after them
        assert silent.recv(1024) == b"" and dribbling.recv(1024) == b""  # cut (not left open: 15 s)


def test_bad_tls_is_closed_without_traceback(tls_server, caplog):
    """A TLS record of garbage, or a client that resets mid-handshake, closes its connection
    quietly: no ERROR in the log, and the server goes on."""
    for data in (b"\x16\x03\x01\x00\x05hello", b"\x16" + b"\xff" * 300):
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
            sock.sendall(data)
            while sock.recv(4096):
                pass
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"\x16\x03\x01")
    wait_for(lambda: tls_server.registry.stats()["connections"] == 0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_large_message_to_a_slow_tls_reader_arrives_whole(make_server, tls_files, peers):
    """A 1.5 MB chat event queued for a reader that is not reading yet is encrypted and sent whole."""
    server = make_server(certfile=tls_files.cert, keyfile=tls_files.key, max_message_bytes=2_000_000,
                         max_text_chars=2_000_000, max_outbox_bytes=8_000_000)
    receiver, sender = (peers(server.url, **sslopt(tls_files)) for _ in range(2))
    receiver.join("big")
    sender.join("big")
    sender.send(type="chat", room="big", text="z" * 1_500_000)
    time.sleep(0.5)  # the receiver is not reading: the kernel buffer fills and the rest is queued
    assert len(receiver.recv_type("chat")["text"]) == 1_500_000


def test_stalled_tls_reader_still_reads_its_1008(make_server, tls_files, peers):
    """A TLS client that stops reading is dropped with 1008, and the close frame it finally reads
    decrypts: the backlog dropped was never encrypted, so no TLS record is missing."""
    server = make_server(certfile=tls_files.cert, keyfile=tls_files.key, max_outbox_bytes=64 * 1024,
                         rate_burst=100000, rate_per_second=100000, max_text_chars=5000)
    stalled = websocket.create_connection(server.url, timeout=5, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
                                          **sslopt(tls_files))
    stalled.recv()  # welcome
    stalled.send(json.dumps({"type": "join", "room": "r"}))
    sender = peers(server.url, **sslopt(tls_files))
    sender.join("r")
    for i in range(300):
        sender.send(type="chat", room="r", text=f"{i:04d}" + "." * 2000)
        sender.recv_type("chat")  # the sender keeps reading; only the stalled client falls behind
    wait_for(lambda: server.registry.stats()["connections"] == 1, timeout=10)
    while True:
        opcode, frame = stalled.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert struct.unpack("!H", frame.data[:2])[0] == 1008
    stalled.shutdown()


def test_startup_prints_wss_and_https(spawn, tls_files):
    """With --certfile/--keyfile the start-up lines give the wss:// and https:// addresses."""
    server = spawn("--db", ":memory:", "--certfile", tls_files.cert, "--keyfile", tls_files.key)
    assert server.lines[-1] == f"roomchat listening on wss://127.0.0.1:{server.port}/"
    assert server.proc.stdout.readline() == f"open https://127.0.0.1:{server.port}/ in your browser\n"


def test_unusable_certificate_exits_2_with_one_line(tmp_path, tls_files):
    """A missing certificate file, or a key that does not match it: exit 2 with one line, no traceback."""
    missing = run_to_exit("--db", ":memory:", "--certfile", str(tmp_path / "nope.pem"))
    wrong_key = run_to_exit("--db", ":memory:", "--certfile", tls_files.cert, "--keyfile", tls_files.ca)
    for done in (missing, wrong_key):
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("roomchat: cannot use ") and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr
