"""Safe on a network, over real sockets: Origin and Host checks, security headers, trusted proxies."""

import http.client
import logging
import socket

import pytest

from tests.helpers import http_exchange, read_head, upgrade_request, wait_for
from tests.proxies import proxy_line_settings


def answer_head(port: int, request: bytes) -> bytes:
    """The response head the server sends for `request` (up to the blank line); the socket is then dropped."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return read_head(sock).partition(b"\r\n\r\n")[0]


def status_of(port: int, request: bytes) -> int:
    return int(answer_head(port, request).split(b" ", 2)[1])


def own(server) -> str:
    return f"127.0.0.1:{server.port}"


def test_foreign_origin_and_null_are_403_own_and_none_are_101(server):
    """A page of another origin (another port too) or `null` gets 403; the server's own origin and a
    client without Origin (not a browser) get 101."""
    host = own(server)
    assert status_of(server.port, upgrade_request(host, origin="http://evil.example")) == 403
    assert status_of(server.port, upgrade_request(host, origin="http://127.0.0.1:1")) == 403
    assert status_of(server.port, upgrade_request(host, origin="null")) == 403
    assert status_of(server.port, upgrade_request(host, origin=f"http://{host}")) == 101
    assert status_of(server.port, upgrade_request(host)) == 101


def test_allowed_origin_is_101_and_a_refusal_names_the_option(make_server, caplog):
    """--allow-origin lets that origin in; a refused one is logged once with the option that allows it."""
    server = make_server(allow_origin=("http://teacher.example:8000",))
    host = own(server)
    assert status_of(server.port, upgrade_request(host, origin="http://teacher.example:8000")) == 101
    for _ in range(2):
        response = http_exchange(server.port, upgrade_request(host, origin="http://student.example"))
        assert response.startswith(b"HTTP/1.1 403 ")
    refusals = [r.getMessage() for r in caplog.records if "student.example" in r.getMessage()]
    assert refusals == ["refused a WebSocket from Origin 'http://student.example' (403); "
                        "to allow it: --allow-origin http://student.example"]


def test_star_origin_is_warned_at_start(make_server, caplog):
    """--allow-origin * lets any page in, and says so at start."""
    server = make_server(allow_origin=("*",))
    assert "--allow-origin *" in caplog.text
    assert status_of(server.port, upgrade_request(own(server), origin="http://evil.example")) == 101


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{8765}", "192.168.1.20"])
def test_foreign_host_is_400_on_http_and_websocket(server, connect, host):
    """A Host the server is not bound to (a DNS-rebinding name) gets 400 for a page and for a
    WebSocket alike, and harms nobody else."""
    peer = connect()
    assert status_of(server.port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()) == 400
    assert status_of(server.port, upgrade_request(host)) == 400
    assert status_of(server.port, upgrade_request(host, origin=f"http://{host}")) == 400
    assert peer.request(type="ping") == {"type": "pong"}


def test_own_names_answer_on_a_loopback_bind(server):
    """Bound to 127.0.0.1: localhost, 127.0.0.1 and [::1] are answered, with or without the port."""
    for host in ("localhost", f"localhost:{server.port}", own(server), "[::1]", f"[::1]:{server.port}"):
        assert status_of(server.port, f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()) == 200, host
        assert status_of(server.port, upgrade_request(host, origin=f"http://{host}")) == 101, host


def test_wildcard_bind_answers_by_ip_address(make_server):
    """Bound to 0.0.0.0 (a LAN class), the page and the WebSocket answer to any IP address in Host,
    while a name that is not the machine's still gets 400."""
    server = make_server(host="0.0.0.0")
    lan = f"192.0.2.10:{server.port}"
    assert status_of(server.port, f"GET / HTTP/1.1\r\nHost: {lan}\r\n\r\n".encode()) == 200
    assert status_of(server.port, upgrade_request(lan, origin=f"http://{lan}")) == 101
    assert status_of(server.port, upgrade_request(f"rebind.example:{server.port}")) == 400


def test_allowed_hosts_replace_the_default(make_server):
    """--allowed-hosts chat.example.com answers that name and no longer the machine's name or
    another address, while loopback stays answered."""
    server = make_server(allowed_hosts=("chat.example.com",))
    assert status_of(server.port, upgrade_request("chat.example.com")) == 101
    assert status_of(server.port, upgrade_request(f"{socket.gethostname()}:{server.port}")) == 400
    assert status_of(server.port, upgrade_request(f"192.0.2.1:{server.port}")) == 400
    assert status_of(server.port, upgrade_request(own(server))) == 101


@pytest.mark.parametrize("path", ["/livez", "/healthz", "/metrics"])
def test_health_and_metrics_answer_on_loopback_behind_the_proxy_line(make_server, path):
    """Started as docs/deploy.md's proxy line says (--trusted-proxy 127.0.0.1 --allowed-hosts
    chat.example.com), /livez, /healthz and /metrics still answer 200 to 127.0.0.1."""
    settings = proxy_line_settings()
    assert settings == {"trusted_proxy": ("127.0.0.1",), "allowed_hosts": ("chat.example.com",)}
    server = make_server(**settings)
    assert get(server, path).status == 200


def get(server, path: str, method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


@pytest.mark.parametrize("path, method", [("/", "GET"), ("/static/app.js", "GET"), ("/static/style.css", "GET"),
                                          ("/healthz", "GET"), ("/nope", "GET"), ("/", "POST"), ("/", "HEAD")])
def test_every_http_answer_has_the_security_headers(server, path, method):
    """Every HTTP answer: a CSP allowing only this origin's scripts and styles and WebSocket to this
    host, never framed, no sniffing, no referrer."""
    response = get(server, path, method)
    csp = response.getheader("Content-Security-Policy")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert f"connect-src 'self' ws://{own(server)} wss://{own(server)}" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.getheader("X-Frame-Options") == "DENY"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("Referrer-Policy") == "no-referrer"


@pytest.mark.parametrize("request_bytes", [b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"GARBAGE\r\n\r\n"])
def test_refusals_have_the_security_headers(server, request_bytes):
    """A refused request's plain-text answer cannot be framed, sniffed or run either."""
    head = answer_head(server.port, request_bytes)
    assert head.startswith(b"HTTP/1.1 400 ")
    for line in (b"Content-Security-Policy: default-src 'none'; frame-ancestors 'none'", b"X-Frame-Options: DENY",
                 b"X-Content-Type-Options: nosniff", b"Referrer-Policy: no-referrer"):
        assert line in head


def connect_log_peer(server, caplog, request: bytes) -> str:
    """Open a WebSocket with `request` and return the peer the server logs for it."""
    caplog.set_level(logging.INFO, logger="roomchat")
    before = len(caplog.records)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        record = wait_for(lambda: next((r for r in caplog.records[before:] if r.getMessage().startswith("connect ")),
                                       None))
    return record.getMessage().split()[1]


def test_trusted_proxy_forwarded_for_and_proto_are_believed(make_server, caplog):
    """From a --trusted-proxy peer, X-Forwarded-For is the logged peer and X-Forwarded-Proto the
    scheme of the Origin check (an https page behind a TLS-terminating proxy connects)."""
    server = make_server(trusted_proxy=("127.0.0.1",))
    host = own(server)
    request = upgrade_request(host, x_forwarded_for="203.0.113.7", x_forwarded_proto="https",
                              origin=f"https://{host}")
    assert connect_log_peer(server, caplog, request) == "203.0.113.7"


def test_a_clients_own_forwarded_is_not_believed_behind_an_x_forwarded_for_proxy(make_server, caplog):
    """By default a trusted proxy's X-Forwarded-For is the logged peer even when the request also
    carries a `Forwarded` the client wrote (which Caddy passes on); --forwarded-header forwarded
    believes `Forwarded` instead."""
    request = upgrade_request("127.0.0.1", x_forwarded_for="203.0.113.7", forwarded="for=198.51.100.7")
    server = make_server(trusted_proxy=("127.0.0.1",))
    assert connect_log_peer(server, caplog, request) == "203.0.113.7"
    caplog.clear()
    server = make_server(trusted_proxy=("127.0.0.1",), forwarded_header="forwarded")
    assert connect_log_peer(server, caplog, request) == "198.51.100.7"


def test_forged_forwarded_headers_do_not_get_past_the_per_address_cap(make_server):
    """Behind a trusted X-Forwarded-For proxy, six upgrades from one client address, each with another
    forged `Forwarded: for=`, meet the per-address cap of 3: the fourth and later get 503."""
    server = make_server(trusted_proxy=("127.0.0.1",), max_connections_per_address=3)
    held, statuses = [], []
    try:
        for n in range(6):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            held.append(sock)
            sock.sendall(upgrade_request(own(server), x_forwarded_for="203.0.113.7", forwarded=f"for=198.51.100.{n}"))
            statuses.append(int(read_head(sock).split(b" ", 2)[1]))
    finally:
        for sock in held:
            sock.close()
    assert statuses == [101, 101, 101, 503, 503, 503]


def test_untrusted_peer_forwarding_headers_are_ignored(server, caplog):
    """From any other peer the same headers change nothing: the peer is the TCP address, and an
    https Origin on a plain-HTTP connection is another origin (403)."""
    host = own(server)
    spoofed = upgrade_request(host, x_forwarded_for="203.0.113.7", forwarded="for=203.0.113.8")
    assert connect_log_peer(server, caplog, spoofed).startswith("127.0.0.1:")
    https_origin = upgrade_request(host, x_forwarded_proto="https", origin=f"https://{host}")
    assert status_of(server.port, https_origin) == 403
