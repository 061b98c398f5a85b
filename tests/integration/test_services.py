"""The tests' own services (tests/services.py): a redis-server a test starts is that test's alone,
even when another test (another pytest-xdist worker's) gets the port it was about to listen on;
after a bounded number of such ports it fails saying so; a port held for a refused connection is
nobody else's."""

import re
import socket

import pytest
import redis

from bench.common import PORT_TRIES
from tests import services


def test_a_redis_server_whose_port_was_taken_meanwhile_starts_on_another(tmp_path, ports_taken_first, redis_server):
    """A free port found for a RedisServer but taken before redis-server binds it (here by another
    test's Redis, answering pings there) is not taken for its own: it starts on another port and
    answers as its own process; the other Redis runs on untouched."""
    ports_taken_first(redis_server.port)  # the first port it finds: someone else's by now
    (tmp_path / "mine").mkdir()
    mine = services.RedisServer(tmp_path / "mine")
    try:
        assert mine.port != redis_server.port and mine.url.endswith(f":{mine.port}/0")
        with redis.Redis(port=mine.port) as client:
            assert client.info("server")["process_id"] == mine.proc.pid
        with redis.Redis(port=redis_server.port) as client:
            assert client.info("server")["process_id"] == redis_server.proc.pid
    finally:
        mine.kill()


def test_a_redis_cluster_whose_port_was_taken_meanwhile_starts_on_others(tmp_path, monkeypatch, redis_server):
    """A Redis Cluster one of whose free ports is taken before its node binds it (by another test's
    Redis) starts that node on another port rather than joining that Redis into the cluster: each
    node answers as its own process, and the other Redis is no cluster node."""
    ports = iter([redis_server.port])
    find = services._cluster_port
    monkeypatch.setattr(services, "_cluster_port", lambda: next(ports, None) or find())
    (tmp_path / "cluster").mkdir()
    cluster = services.RedisCluster(tmp_path / "cluster")
    try:
        assert redis_server.port not in cluster.ports
        for port, proc in zip(cluster.ports, cluster.procs, strict=True):
            with redis.Redis(port=port) as client:
                assert client.info("server")["process_id"] == proc.pid
        with redis.Redis(port=redis_server.port) as client:
            assert client.info("server")["redis_mode"] == "standalone"
    finally:
        cluster.kill()


def test_a_program_whose_every_free_port_is_taken_fails_saying_so(tmp_path, ports_taken_first, redis_server):
    """When each of the PORT_TRIES free ports found is taken before redis-server binds it, the
    start ends there with PortTaken naming the program, the number of ports and why each was lost
    (another process answers there, or it exited first: which comes first is the machine's)."""
    ports_taken_first(*[redis_server.port] * PORT_TRIES)
    (tmp_path / "mine").mkdir()
    with pytest.raises(services.PortTaken, match=f"^redis-server did not get any of {PORT_TRIES} free ports: ") as lost:
        services.RedisServer(tmp_path / "mine")
    reasons = re.findall(rf"port {redis_server.port}: redis-server \d+ did not get it \(([^)]*)\)", str(lost.value))
    assert len(reasons) == PORT_TRIES and set(reasons) <= {"another process answers there", "it exited"}, reasons


def test_a_held_port_refuses_connections_and_no_one_else_binds_it():
    """held_port() (bound, never listening): a connection there is refused, and no other socket
    can bind the port meanwhile, not even one with SO_REUSEADDR and SO_REUSEPORT."""
    with services.held_port() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", port))
