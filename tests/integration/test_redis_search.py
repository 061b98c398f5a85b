"""search on Redis: a scan of the room's stream in Redis, the same answers on every process (one
Redis and a Redis Cluster), paging across the scan's pages, and history the quotas trimmed; real
redis-server(s), roomchat processes and servers in this process. The semantics every engine
shares (words, edits, limits, errors): test_search.py, parametrized over the engines; a scan that
holds up no chat: test_attack_search.py."""

import pytest
import redis

from chatserver.engines import redis as redis_engine
from tests.helpers import FAST_LIMITS, ROOT, wait_for
from tests.services import RedisCluster

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """One 3-master Redis Cluster for this module's tests (emptied before each that uses it)."""
    service = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield service
    service.kill()


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_url(request):
    """The URL of this test's Redis: one redis-server, or a node of the (emptied) Redis Cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    service = request.getfixturevalue("redis_cluster")
    for port in service.ports:
        with redis.Redis(port=port) as client:
            client.flushall()
    return service.urls[0]


def ask(peer, request_id, **msg) -> dict:
    """Send a request with `request_id`; its reply or own copy (room events before it skipped)."""
    peer.send(id=request_id, **msg)
    while True:
        event = peer.recv()
        if event.get("id") == request_id:
            return event


def found(peer, q: str, room: str = "lobby", **msg) -> list:
    """The seqs a search of `room` for `q` finds, in the order given (fails on an error)."""
    reply = ask(peer, "s", type="search", room=room, q=q, **msg)
    assert reply["type"] == "search", reply
    return [m["seq"] for m in reply["messages"]]


def seen(peer, room: str, seq: int) -> None:
    """Read `peer`'s events until one of `room` with `seq` arrived (delivered on its process)."""
    while True:
        event = peer.recv()
        if event.get("room") == room and event.get("seq") == seq:
            return


def test_a_search_on_one_process_finds_what_another_stored(cluster, peers):
    """Two processes on one Redis: chats, an edit and a delete made on A are what a member on B
    finds, by current text, newest first; a deleted chat and an edit's old words never."""
    a, b = cluster(2)
    ann, bob = peers(a.url), peers(b.url)
    ann.join("lobby")
    bob.join("lobby")
    ann.chat_all("lobby", ["deploy the old plan", "lunch plan", "secret plan", "Déploiement fini"])
    assert ask(ann, 1, type="edit", room="lobby", seq=1, text="deploy the new idea")["type"] == "edit"
    assert ask(ann, 2, type="delete", room="lobby", seq=3)["type"] == "delete"
    seen(bob, "lobby", 6)
    assert found(bob, "plan") == [2]
    assert found(bob, "deploy") == [1] and found(bob, "dep") == [4, 1] and found(bob, "deploiement FIN") == [4]
    assert found(bob, "secret") == [] and found(bob, "old") == []
    (edited,) = ask(bob, 3, type="search", room="lobby", q="idea")["messages"]
    assert (edited["text"], edited["from"]) == ("deploy the new idea", ann.nick) and edited["edited"] > 0


def test_on_a_redis_cluster_every_process_finds_each_rooms_chats(redis_cluster, spawn, peers):
    """Three processes, each on its own node of a Redis Cluster, rooms in different hash slots:
    what one process stored, a member on another finds (each room's keys share one slot)."""
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as client:
            client.flushall()
    servers = [spawn("--redis", url) for url in redis_cluster.urls]
    rooms = [f"room{i}" for i in range(6)]
    writers, readers = peers(servers[0].url), [peers(servers[1].url), peers(servers[2].url)]
    for peer in (writers, *readers):
        for room in rooms:
            peer.join(room)
    for i, room in enumerate(rooms):
        writers.chat_all(room, [f"build {i} started", f"build {i} is green", "coffee break"])
    for reader in readers:
        for i, room in enumerate(rooms):
            wait_for(lambda r=reader, room=room: found(r, "build", room) == [2, 1], timeout=20, interval=0.1)
            assert found(reader, f"build {i} gre", room) == [2] and found(reader, "coffee", room) == [3]


def test_paging_with_before_walks_every_match_once_across_scan_pages(redis_url, make_server, connect, monkeypatch):
    """With a scan page of 4 events, 90 stored events (chats, edits, deletes, reactions) searched
    with `limit` 7 and `before`: the pages together are every current match, newest first, each
    once; one search with limit 200 gives the same list."""
    monkeypatch.setattr(redis_engine, "SEARCH_PAGE", 4)
    server = make_server(redis=redis_url, **FAST_LIMITS)
    peer = connect(server.url)
    peer.join("lobby")
    texts = {seq: (f"needle {seq}" if seq % 3 else f"hay {seq}") for seq in range(1, 61)}
    peer.chat_all("lobby", list(texts.values()))
    for n, seq in enumerate(range(1, 61, 4)):  # edits: needle -> straw, hay -> needle
        text = "straw now" if seq % 3 else f"needle again {seq}"
        assert ask(peer, f"e{n}", type="edit", room="lobby", seq=seq, text=text)["type"] == "edit"
        texts[seq] = text
    for n, seq in enumerate(range(2, 61, 7)):
        assert ask(peer, f"d{n}", type="delete", room="lobby", seq=seq)["type"] == "delete"
        texts.pop(seq)
    for n, seq in enumerate(range(5, 61, 10)):
        assert ask(peer, f"r{n}", type="react", room="lobby", seq=seq, emoji="👍")["type"] == "react"
    expected = sorted((seq for seq, text in texts.items() if text.startswith("needle")), reverse=True)
    assert len(expected) > 25
    walked, before = [], None
    while True:
        page = found(peer, "needle", limit=7, **({} if before is None else {"before": before}))
        if not page:
            break
        assert len(page) <= 7
        walked += page
        before = page[-1]
    assert walked == expected
    assert found(peer, "needle", limit=200) == expected



def test_a_scan_costs_one_round_trip_per_page_of_the_rooms_events(redis_server, make_server, connect, monkeypatch):
    """With a scan page of 4 events, a search that finds nothing in a room of exactly 8 reads 2
    pages (it knows the second reached the room's oldest event; no empty third), one of 9 reads 3,
    and one of 9 whose 2 oldest chats are deleted (kept in `cur` only) still 3 (PROTOCOL.md's
    cost: a round trip per SEARCH_PAGE events the room keeps)."""
    monkeypatch.setattr(redis_engine, "SEARCH_PAGE", 4)
    server = make_server(redis=redis_server.url, **FAST_LIMITS)
    peer = connect(server.url)
    store = redis.Redis.from_url(redis_server.url)

    def pages(room: str) -> int:
        def calls() -> int:
            return int(store.info("commandstats").get("cmdstat_xrevrange", {}).get("calls", 0))

        before = calls()
        assert found(peer, "nowhere", room) == []
        return calls() - before

    try:
        for room, count in (("eight", 8), ("nine", 9)):
            peer.join(room)
            peer.chat_all(room, [f"chat {i}" for i in range(count)])
            assert pages(room) == -(-count // 4), room
        for n, seq in enumerate((1, 2)):
            assert ask(peer, f"d{n}", type="delete", room="nine", seq=seq)["type"] == "delete"
        assert pages("nine") == 3  # 9 chats, 2 of them in `cur` only, and 2 deletes
    finally:
        store.close()


def test_history_the_per_room_quota_trimmed_is_not_found(redis_url, make_server, connect):
    """--history-per-room 10 on Redis: only the chats still in the room's stream are found; an
    edited chat that fell out of it is not (though its edited state was kept)."""
    server = make_server(redis=redis_url, history_per_room=10, **FAST_LIMITS)
    peer = connect(server.url)
    peer.join("lobby")
    peer.chat_all("lobby", ["alpha first"])
    assert ask(peer, 1, type="edit", room="lobby", seq=1, text="alpha edited")["type"] == "edit"
    assert found(peer, "alpha") == [1]
    peer.chat_all("lobby", [f"filler {i}" for i in range(20)])  # seqs 3-22
    assert found(peer, "alpha") == []
    assert found(peer, "filler", limit=200) == list(range(22, 12, -1))


def test_history_the_age_quota_trimmed_is_not_found(redis_server, make_server, connect):
    """--history-max-age on Redis: chats older than it stop being found once a pass of the
    quotas trimmed them."""
    server = make_server(redis=redis_server.url, history_max_age=1.0, **FAST_LIMITS)
    peer = connect(server.url)
    peer.join("lobby")
    peer.chat_all("lobby", ["ancient words", "ancient more"])
    assert found(peer, "ancient") in ([2, 1], [2], [])  # (the machine may have been slow)
    wait_for(lambda: found(peer, "ancient") == [], timeout=40, interval=0.5)


def test_protocol_md_states_the_scans_page_size():
    """PROTOCOL.md's cost of a search on Redis names the engine's page (SEARCH_PAGE events per round
    trip) and how long a round trip may take before `unavailable` (READ_TIMEOUT)."""
    text = " ".join((ROOT / "PROTOCOL.md").read_text("utf-8").split())
    assert f"{redis_engine.SEARCH_PAGE} stored events per round trip" in text
    assert f"one round trip per {redis_engine.SEARCH_PAGE} events the room keeps" in text
    assert f"too slow to answer ({redis_engine.READ_TIMEOUT:g} s per round trip)" in text
