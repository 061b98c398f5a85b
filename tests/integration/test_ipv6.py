"""IPv6: `--host ::1` and `--host ::` (dual-stack) listen, and clients chat over [::1]."""

import socket
import urllib.request

import pytest

from tests.helpers import Peer, wait_for


def _ipv6_loopback() -> str | None:
    """Why this machine cannot test IPv6 loopback, or None when it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind ::1 ({exc.strerror or exc})"
    return None


pytestmark = pytest.mark.skipif(_ipv6_loopback() is not None, reason=f"no IPv6 loopback: {_ipv6_loopback()}")


@pytest.mark.parametrize("host", ["::1", "::"])
def test_ipv6_host_listens_and_two_clients_chat_over_ipv6_loopback(spawn, host):
    """`--host ::1` and `--host ::` start, print a bracketed ws:// address, serve the page at
    http://[::1]:PORT/ and carry a chat between two clients connected to ws://[::1]:PORT/."""
    server = spawn("--db", ":memory:", "--host", host, "--log-level", "INFO")
    assert server.url == f"ws://[{host}]:{server.port}/"
    url = f"ws://[::1]:{server.port}/"
    with urllib.request.urlopen(f"http://[::1]:{server.port}/", timeout=5) as page:
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    ann, bob = Peer(url), Peer(url)
    try:
        ann.join("lobby")
        bob.join("lobby")
        ann.send(type="chat", room="lobby", text="over ipv6", id=1)
        assert bob.recv_type("chat")["text"] == "over ipv6"
    finally:
        ann.close()
        bob.close()
    assert wait_for(lambda: "connect [::1]:" in server.stderr_text())


def test_dual_stack_host_also_serves_ipv4_clients_by_their_ipv4_address(spawn):
    """`--host ::` takes IPv4 clients too (as 0.0.0.0 would), and logs them as 127.0.0.1, not
    ::ffff:127.0.0.1."""
    server = spawn("--db", ":memory:", "--host", "::", "--log-level", "INFO")
    peer = Peer(f"ws://127.0.0.1:{server.port}/")
    try:
        assert peer.welcome["type"] == "welcome"
    finally:
        peer.close()
    assert wait_for(lambda: "connect 127.0.0.1:" in server.stderr_text())
    assert "::ffff:" not in server.stderr_text()
