"""The tests' own services (tests/services.py): a redis-server a test starts is that test's alone,
even when another test (another pytest-xdist worker's) gets the port it was about to listen on."""

import redis

from tests import services


def test_a_redis_server_whose_port_was_taken_meanwhile_starts_on_another(tmp_path, monkeypatch, redis_server):
    """A free port found for a RedisServer but taken before redis-server binds it (here by another
    test's Redis, answering pings there) is not taken for its own: it starts on another port and
    answers as its own process; the other Redis runs on untouched."""
    ports = iter([redis_server.port])  # the first port it finds: someone else's by now
    find = services.free_port
    monkeypatch.setattr(services, "free_port", lambda: next(ports, None) or find())
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
    Redis) starts every node again on other ports rather than joining that Redis into the cluster:
    each node answers as its own process, and the other Redis is no cluster node."""
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
