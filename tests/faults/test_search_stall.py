"""search while redis-server is stalled (SIGSTOP): the searcher is answered `unavailable` once its
read times out, other connections are answered meanwhile, and search works again once Redis is back."""

import pytest

from tests.faults.harness import FaultyRedis
from tests.helpers import Peer, ServerProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_a_search_during_a_redis_stall_answers_unavailable(tmp_path, spawn):
    """Redis SIGSTOPped: a member's search answers `unavailable` (nothing hangs: the read times
    out), a ping on another connection is answered while it waits, and after SIGCONT the same
    search finds the room's chats."""
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
