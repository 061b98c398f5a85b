"""The harness's own faults do what the cases rely on: the proxy's blackhole keeps the connection
open and holds the bytes, heal delivers them, cut closes; a crash with a cut append-only file
loses exactly the writes after the mark."""

import contextlib
import socket
import threading

import pytest

from tests.faults.harness import FaultyRedis, Proxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
def echo_port():
    """A TCP echo server on 127.0.0.1 (a thread per connection); its port."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_a_blackhole_holds_bytes_without_closing_and_heal_delivers_them(echo_port):
    """Blackholed: what is sent gets no answer and the connection stays open (no EOF, no reset);
    healed: the held bytes arrive, in order; cut: the client sees the connection end."""
    proxy = Proxy(echo_port)
    port = int(proxy.url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"before")
        assert sock.recv(64) == b"before"
        proxy.blackhole()
        sock.sendall(b"held ")
        sock.sendall(b"bytes")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # neither data nor EOF nor a reset
            sock.recv(64)
        proxy.heal()
        sock.settimeout(5)
        got = b""
        while len(got) < len(b"held bytes"):
            got += sock.recv(64)
        assert got == b"held bytes"
        proxy.cut()
        with contextlib.suppress(ConnectionResetError):  # a reset is an end too
            assert sock.recv(64) == b""
    proxy.close()


def test_a_crash_with_a_cut_aof_loses_the_writes_after_the_mark(tmp_path):
    """kill -9 and a restart from the append-only file cut at a mark: what was written before
    the mark is there, what came after is gone, and Redis starts despite the torn command."""
    redis = FaultyRedis(tmp_path)
    try:
        with redis.client() as client:
            client.set("kept", "1")
            mark = redis.aof_size()
            client.set("lost", "1")
            client.incr("counter")
        assert redis.crash_and_lose_tail(mark) > 0
        with redis.client() as client:
            assert client.get("kept") == b"1"
            assert client.get("lost") is None and client.get("counter") is None
    finally:
        redis.kill()
