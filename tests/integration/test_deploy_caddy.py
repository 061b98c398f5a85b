"""docs/Caddyfile run for real with Debian's caddy in front of roomchat: the page, a WebSocket
chat, the forwarded headers, a client's forged `Forwarded` kept from the per-address cap, and an
access log without tokens."""

import json
import re
import urllib.request

import pytest
import websocket

from tests.helpers import ROOT, Peer, held_port, require_program, wait_for
from tests.proxies import ProxyProcesses, forwarded_headers

CADDYFILE = ROOT / "docs" / "Caddyfile"
# What the test changes in docs/Caddyfile, each found exactly once: the site's name (plain HTTP
# for any Host on a free port of 127.0.0.1, so Caddy asks no CA for a certificate), the upstream,
# and the log's path.
SITE, UPSTREAM, LOG = "chat.example.org {", "reverse_proxy 127.0.0.1:8765 {", "/var/log/caddy/roomchat-access.log"
# The test's own global options: no admin endpoint (several Caddys at once), nothing outside tmp.
GLOBAL = "{\n\tadmin off\n}\n\n"


@pytest.fixture
def caddy(tmp_path):
    """caddy(upstream_port) -> the port of Debian's caddy running docs/Caddyfile in front of
    `upstream_port`, in the foreground as our child, on a free port (another if it was taken), its
    files in tmp_path; stopped at teardown."""
    binary = require_program("caddy", "apt-get install caddy")
    processes = ProxyProcesses()
    home = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}

    def argv_on(port: int, upstream_port: int) -> list:
        text = CADDYFILE.read_text()
        assert text.count(SITE) == text.count(UPSTREAM) == text.count(LOG) == 1, "docs/Caddyfile changed shape"
        text = text.replace(SITE, f"http://:{port} {{\n\tbind 127.0.0.1").replace(LOG, str(tmp_path / "access.log"))
        text = text.replace(UPSTREAM, f"reverse_proxy 127.0.0.1:{upstream_port} {{")
        (tmp_path / "Caddyfile").write_text(GLOBAL + text)
        return [binary, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"]

    yield lambda upstream_port: processes.start("caddy", lambda port: argv_on(port, upstream_port),
                                                env={"PATH": "/usr/bin:/bin", **home})
    processes.stop_all()


def test_caddy_serves_the_page_and_carries_a_websocket_chat(server, caddy, peers):
    """Through Caddy, GET / is roomchat's chat page, and two WebSocket clients chat in a room."""
    port = caddy(server.port)
    alice, bob = peers(f"ws://127.0.0.1:{port}/"), peers(f"ws://127.0.0.1:{port}/")
    alice.join("lobby")
    bob.join("lobby")
    alice.send(type="chat", room="lobby", text="through caddy", id=1)
    assert alice.recv_type("chat")["id"] == 1 and bob.recv_type("chat")["text"] == "through caddy"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as proxied, \
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=5) as direct:
        assert proxied.status == 200 and proxied.read() == direct.read()


@pytest.mark.parametrize("holder", ["bound", "reuseport"])
def test_caddy_on_a_port_taken_meanwhile_starts_on_another(server, caddy, ports_taken_first, holder):
    """A free port found for Caddy but taken before Caddy binds it is not taken for Caddy's, whether
    Caddy exits ("address already in use": a socket bound there) or listens beside the other (a
    listener with SO_REUSEPORT, which Caddy sets too): Caddy starts on another port, and the chat
    page comes from there."""
    with held_port(holder) as taken:
        ports_taken_first(taken)
        port = caddy(server.port)
        assert port != taken
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as proxied:
            assert proxied.status == 200 and proxied.headers["Content-Type"].startswith("text/html")


def test_caddy_forwards_client_address_and_scheme(caddy):
    """Behind Caddy the upstream gets X-Forwarded-For with the address Caddy saw (not the client's
    claim), X-Forwarded-Proto and the original Host, and no `Forwarded` the client wrote. (The
    upgrade itself is the chat test's: urllib sends `Connection: close`, so this is no upgrade.)"""
    headers = forwarded_headers(caddy)
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-proto"] == "http"
    assert headers["host"] == "chat.example.org"
    assert "forwarded" not in headers


def test_forged_forwarded_through_caddy_meets_the_per_address_cap(make_server, caddy):
    """roomchat with --trusted-proxy 127.0.0.1 and a per-address cap of 3 behind Caddy: six
    upgrades from one client, each with another forged `Forwarded: for=`, get 3 x 101 then 503."""
    server = make_server(trusted_proxy=("127.0.0.1",), max_connections_per_address=3)
    port = caddy(server.port)
    held, statuses = [], []
    try:
        for n in range(6):
            ws = websocket.WebSocket()
            try:
                ws.connect(f"ws://127.0.0.1:{port}/", header=[f"Forwarded: for=198.51.100.{n}"], timeout=5)
                held.append(ws)
                statuses.append(101)
            except websocket.WebSocketBadStatusException as exc:
                statuses.append(exc.status_code)
    finally:
        for ws in held:
            ws.close()
    assert statuses == [101, 101, 101, 503, 503, 503]


def test_caddy_access_log_keeps_no_token(server, caddy, tmp_path):
    """A page and a WebSocket opened through Caddy with `?token=`, `?resume=` and `?invite=` are
    logged (JSON lines with their path) without any of those values."""
    port = caddy(server.port)
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.CADDY-LOG-SIGNATURE"
    urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={secret}&invite=inv1te#lobby", timeout=5).close()
    Peer(f"ws://127.0.0.1:{port}/?nick=ann&resume=r3sum3").close()
    log_path = tmp_path / "access.log"
    text = wait_for(lambda: log_path.exists() and log_path.read_text().count("\n") >= 2 and log_path.read_text(),
                    timeout=10)
    uris = [json.loads(line)["request"]["uri"] for line in text.splitlines()]
    assert all(re.match(r"/(\?|$)", uri) for uri in uris) and any("nick=ann" in uri for uri in uris), uris
    for value in ("CADDY-LOG-SIGNATURE", "inv1te", "r3sum3"):
        assert value not in text, text
