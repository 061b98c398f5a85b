"""Connection caps and the descriptor limit on a real server (issue 10, item 5): over a cap a
client gets 503 with Retry-After at once, the accept loop does not spin, a normal client is
served again as soon as there is room, and each kind of refusal is logged once per burst."""

import functools
import resource
import socket
import time

import psutil
import pytest

from chatserver.transport import caps
from tests.helpers import read_head, upgrade_request, wait_for


def open_upgrade(port: int, host: str = "127.0.0.1", **headers) -> tuple[socket.socket, bytes]:
    """A WebSocket opening request on a new socket; (the socket, the response head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(upgrade_request(f"{host}:{port}", **headers))
    return sock, read_head(sock)


def refused_quickly(port: int, **headers) -> bytes:
    """The head of a refused upgrade, checked to be a 503 with Retry-After; it comes at once, not
    after a slot frees or a timeout (the socket's 5 s would fail the test)."""
    sock, head = open_upgrade(port, **headers)
    sock.close()
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: " in head, head
    return head


@pytest.fixture
def sockets():
    """Sockets a test opens, closed at teardown."""
    held = []
    yield held
    for sock in held:
        sock.close()


def test_per_address_cap_answers_503_and_serves_other_addresses(make_server, sockets):
    """Past --max-connections-per-address, a client address gets 503 with Retry-After at once;
    behind a trusted proxy the cap is per reported client, so another client is still served."""
    direct = make_server(max_connections_per_address=3)
    for _ in range(3):
        sock, head = open_upgrade(direct.port)
        assert head.startswith(b"HTTP/1.1 101 "), head
        sockets.append(sock)
    assert b"too many connections from 127.0.0.1 (3)" in refused_quickly(direct.port)

    proxied = make_server(max_connections_per_address=2, trusted_proxy=("127.0.0.1",))
    for _ in range(2):
        sock, head = open_upgrade(proxied.port, x_forwarded_for="10.0.0.1")
        assert head.startswith(b"HTTP/1.1 101 "), head
        sockets.append(sock)
    assert b"10.0.0.1" in refused_quickly(proxied.port, x_forwarded_for="10.0.0.1")
    sock, head = open_upgrade(proxied.port, x_forwarded_for="10.0.0.2")
    sockets.append(sock)
    assert head.startswith(b"HTTP/1.1 101 ")


def test_global_cap_refuses_then_serves_again(make_server, sockets, caplog):
    """Past --max-connections, new clients get 503 at once (logged once for the burst); when a
    client leaves, the next one is served."""
    server = make_server(max_connections=4)
    for _ in range(4):
        sock, head = open_upgrade(server.port)
        assert head.startswith(b"HTTP/1.1 101 ")
        sockets.append(sock)
    for _ in range(10):
        assert b"the server is full (4 connections)" in refused_quickly(server.port)
    assert len([r for r in caplog.records if "refusing connections" in r.getMessage()]) == 1
    sockets.pop().close()
    wait_for(lambda: server.transport.caps.total == 3)
    sock, head = open_upgrade(server.port)
    sockets.append(sock)
    assert head.startswith(b"HTTP/1.1 101 ")


def test_thread_that_cannot_start_is_a_503_not_a_traceback(server, monkeypatch, caplog, sockets):
    """When a connection's thread cannot start, the client gets 503 and the log one warning for
    the burst, with no traceback; once threads start again, clients are served."""

    def no_threads(target, args):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(caps, "start_thread", no_threads)
    for _ in range(20):
        assert b"the server is busy" in refused_quickly(server.port)
    records = [r for r in caplog.records if r.name.startswith("roomchat")]
    assert len(records) == 1 and "cannot start a thread" in records[0].getMessage() and not records[0].exc_info
    monkeypatch.undo()
    sock, head = open_upgrade(server.port)
    sockets.append(sock)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert server.transport.caps.total == 1


def limit_descriptors(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def fill(port: int, held: list, limit: int = 1000) -> bytes:
    """Open WebSocket connections until one is refused; returns the refusal's head."""
    for _ in range(limit):
        sock, head = open_upgrade(port)
        if not head.startswith(b"HTTP/1.1 101 "):
            sock.close()
            return head
        held.append(sock)
    raise AssertionError(f"{limit} connections and none refused")


@pytest.mark.slow
def test_default_global_cap_keeps_clear_of_the_descriptor_limit(spawn, sockets):
    """With no --max-connections, the cap is the open-file limit less headroom: with 160
    descriptors about 96 clients are served, the next get 503, and the server never runs out."""
    server = spawn("--db", ":memory:", "--max-connections-per-address", "0",
                   preexec_fn=functools.partial(limit_descriptors, 160))
    head = fill(server.port, sockets)
    assert b"the server is full (96 connections)" in head
    assert len(sockets) == 96
    sockets.pop().close()
    sock, head = wait_for(lambda: (s := open_upgrade(server.port)) and s[1].startswith(b"HTTP/1.1 101 ") and s)
    sockets.append(sock)
    assert "out of file descriptors" not in server.stderr_text()


@pytest.mark.slow
def test_descriptor_limit_answers_503_without_spinning(spawn, sockets):
    """With a cap above the open-file limit, accept() runs out of descriptors: each waiting
    client still gets 503 at once, the accept thread does not spin, the log has one line for
    the burst, and clients are served again when descriptors free up."""
    server = spawn("--db", ":memory:", "--max-connections", "1000", "--max-connections-per-address", "0",
                   preexec_fn=functools.partial(limit_descriptors, 64))
    head = fill(server.port, sockets)
    assert b"out of file descriptors" in head
    for _ in range(10):
        refused_quickly(server.port)
    process = psutil.Process(server.proc.pid)
    before = process.cpu_times()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)  # waits in the backlog, says nothing
    time.sleep(1.0)
    after = process.cpu_times()
    sock.close()
    assert (after.user + after.system) - (before.user + before.system) < 0.3
    assert server.stderr_text().count("out of file descriptors") == 1
    for _ in range(5):
        sockets.pop().close()
    sock, head = wait_for(lambda: (s := open_upgrade(server.port)) and s[1].startswith(b"HTTP/1.1 101 ") and s)
    sockets.append(sock)

