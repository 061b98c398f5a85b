"""search while redis-server is stalled (SIGSTOP): the searcher is answered `unavailable` once its
read times out, the process keeps answering other connections while Redis is stalled and while a
search waits on it, and search works again once Redis is back."""

import threading

import pytest

from chatserver.engines import redis as redis_engine
from tests.faults.harness import FaultyRedis
from tests.helpers import FAST_LIMITS, Peer, ServerProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_a_search_during_a_redis_stall_answers_unavailable(tmp_path, spawn):
    """Redis SIGSTOPped: a member's search answers `unavailable` (nothing hangs: the read times
    out), a ping on another connection is answered while Redis is stalled, and after SIGCONT the
    same search finds the room's chats."""
    service = FaultyRedis(tmp_path)
    server: ServerProcess = spawn("--redis", service.url)
    ann, other = Peer(server.url, timeout=60), Peer(server.url, timeout=60)
    try:
        ann.join("lobby")
        ann.chat_all("lobby", ["stalled build is green"])
        service.pause()
        try:
            ann.send(type="search", room="lobby", q="green", id=1)
            assert other.request(type="ping") == {"type": "pong"}
            reply = ann.recv()
            assert (reply["type"], reply.get("code"), reply["id"]) == ("error", "unavailable", 1), reply
        finally:
            service.resume()

        def searched():
            ann.send(type="search", room="lobby", q="green", id=2)
            reply = ann.recv()
            return reply if reply["type"] == "search" else None

        assert [m["seq"] for m in wait_for(searched, timeout=30, interval=0.5)["messages"]] == [1]
    finally:
        ann.close()
        other.close()
        server.stop()  # before its Redis goes
        service.kill()


@pytest.fixture
def faulty_redis(tmp_path):
    """A FaultyRedis of this test's own; set up before make_server, so resumed and killed after
    its servers shut down."""
    service = FaultyRedis(tmp_path)
    yield service
    service.resume()
    service.kill()


def test_a_search_waiting_on_a_stalled_redis_holds_up_no_other_connection(faulty_redis, make_server, peers,
                                                                         monkeypatch):
    """A search inside its Redis scan while Redis is SIGSTOPped (the read timeout raised to 60 s
    here, so only SIGCONT ends the wait): a ping on another connection is answered and the search
    is still unfinished after it; after SIGCONT the search answers the room's chats."""
    monkeypatch.setattr(redis_engine, "READ_TIMEOUT", 60.0)  # read when the server opens its pool
    server = make_server(redis=faulty_redis.url, **FAST_LIMITS)
    ann, other = peers(server.url, timeout=60), peers(server.url, timeout=60)
    ann.join("lobby")
    ann.chat_all("lobby", ["stalled build is green"])
    started, finished = threading.Event(), threading.Event()
    scan = server.engine._search  # the scan's Redis round trips, run on ann's connection thread

    def watched(*args):
        started.set()
        try:
            return scan(*args)
        finally:
            finished.set()

    monkeypatch.setattr(server.engine, "_search", watched)
    faulty_redis.pause()
    try:
        ann.send(type="search", room="lobby", q="green", id=1)
        assert started.wait(30)
        assert other.request(type="ping") == {"type": "pong"}
        assert not finished.is_set()  # Redis is stopped: the scan cannot have ended
    finally:
        faulty_redis.resume()
    reply = ann.recv_type("search")
    assert (reply["id"], [m["seq"] for m in reply["messages"]]) == (1, [1])
    assert finished.is_set()
