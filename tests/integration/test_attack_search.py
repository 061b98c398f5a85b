"""search from hostile or careless clients over real sockets: what a search may cost the others."""

import threading

import pytest

from chatserver.engines import memory
from chatserver.engines import redis as redis_engine
from chatserver.rooms import registry as registry_module
from chatserver.rooms.registry import REPLY_BUILDERS, SEARCHERS
from tests.helpers import FAST_LIMITS
from tests.integration.test_search import search


def hold_scans(monkeypatch, module) -> tuple:
    """Every search of `module`'s engine stops inside its scan until released: (a Semaphore
    released once per scan stopped, an Event that lets them all go on)."""
    inside, release = threading.Semaphore(0), threading.Event()
    real = module.matches

    def held(words, text):
        inside.release()
        release.wait(30)
        return real(words, text)

    monkeypatch.setattr(module, "matches", held)
    return inside, release


@pytest.mark.parametrize("engine", ["memory", "redis"])
def test_a_search_scans_without_holding_up_chats(request, engine, monkeypatch):
    """The memory engine scans a room outside its lock, Redis's on the searcher's thread: while one
    member's search is still comparing texts (held here inside the scan), chats in its room and
    in another are stored and delivered, to the searcher too; then the search answers what it read."""
    options = {"redis": request.getfixturevalue("redis_server").url} if engine == "redis" else {}
    server = request.getfixturevalue("make_server")(**options, **FAST_LIMITS)
    connect = request.getfixturevalue("connect")
    searcher, chatter = connect(server.url), connect(server.url)
    searcher.join("big")
    searcher.chat_all("big", ["needle one", "needle two"])
    chatter.join("big")
    chatter.join("other")
    inside, release = hold_scans(monkeypatch, redis_engine if engine == "redis" else memory)
    searcher.send(type="search", room="big", q="needle", id="s")
    assert inside.acquire(timeout=10)
    try:
        for room in ("other", "big"):
            chatter.send(type="chat", room=room, text=f"needle in {room}")
            assert chatter.recv_type("chat")["text"] == f"needle in {room}"
        assert searcher.recv_type("chat")["text"] == "needle in big"
    finally:
        release.set()
    assert [m["text"] for m in searcher.recv_type("search")["messages"]] == ["needle two", "needle one"]


@pytest.mark.parametrize("engine", ["memory", "redis"])
def test_searches_in_every_search_slot_hold_up_no_join_or_history(request, engine, monkeypatch):
    """Searches have slots of their own: with REPLY_BUILDERS searches sent and SEARCHERS of them
    held inside their scans, a join to the room (history in its `joined`) and a `history` on other
    connections are answered; once released every search answers, never more than SEARCHERS scanning."""
    options = {"redis": request.getfixturevalue("redis_server").url} if engine == "redis" else {}
    server = request.getfixturevalue("make_server")(**options, **FAST_LIMITS)
    connect = request.getfixturevalue("connect")
    reader = connect(server.url)
    reader.join("big")
    reader.chat_all("big", ["needle one", "needle two"])
    searchers = [connect(server.url) for _ in range(REPLY_BUILDERS)]
    for searcher in searchers:
        searcher.join("big")
    lock, full = threading.Lock(), threading.Event()
    scanning = {"now": 0, "most": 0}  # searches inside the engine's scan, under `lock`
    real_search = server.engine.search
    _inside, release = hold_scans(monkeypatch, redis_engine if engine == "redis" else memory)

    def counted(*args, **kwargs):
        with lock:
            scanning["now"] += 1
            scanning["most"] = max(scanning["most"], scanning["now"])
            if scanning["now"] == SEARCHERS:
                full.set()
        try:
            return real_search(*args, **kwargs)
        finally:
            with lock:
                scanning["now"] -= 1

    monkeypatch.setattr(server.engine, "search", counted)
    for n, searcher in enumerate(searchers):
        searcher.send(type="search", room="big", q="needle", id=n)
    assert full.wait(10)
    try:
        joiner = connect(server.url)
        assert [m["text"] for m in joiner.join("big")["history"]] == ["needle one", "needle two"]
        reader.send(type="history", room="big", id="h")
        assert [m["text"] for m in reader.recv_type("history")["messages"]] == ["needle one", "needle two"]
        assert not release.is_set() and scanning["now"] == SEARCHERS  # the searches were held throughout
    finally:
        release.set()
    for n, searcher in enumerate(searchers):
        reply = searcher.recv_type("search")
        assert (reply["id"], [m["text"] for m in reply["messages"]]) == (n, ["needle two", "needle one"])
    assert scanning["most"] == SEARCHERS


def test_a_search_that_finds_no_slot_in_time_is_unavailable(make_server, connect, monkeypatch):
    """With every search slot held (SEARCHERS searches inside their scans), one more search waits
    for a slot SEARCH_WAIT seconds (made 0.5 here), then is answered `unavailable`, its connection
    still open and answered; the held searches answer once released."""
    server = make_server(**FAST_LIMITS)
    peers = [connect(server.url) for _ in range(SEARCHERS + 1)]
    for peer in peers:
        peer.join("big")
    peers[0].chat_all("big", ["needle one"])
    inside, release = hold_scans(monkeypatch, memory)
    monkeypatch.setattr(registry_module, "SEARCH_WAIT", 0.5)
    *holders, late = peers
    for n, holder in enumerate(holders):
        holder.send(type="search", room="big", q="needle", id=n)
    try:
        for _ in holders:
            assert inside.acquire(timeout=10)  # every slot is held
        late.send(type="search", room="big", q="needle", id="late")
        error = late.recv_type("error")
        assert (error["id"], error["code"]) == ("late", "unavailable"), error
        assert late.chat_all("big", ["still here"])[0]["text"] == "still here"
    finally:
        release.set()
    for n, holder in enumerate(holders):
        reply = holder.recv_type("search")
        assert (reply["id"], [m["text"] for m in reply["messages"]]) == (n, ["needle one"])


def test_repeated_and_overlapping_words_find_what_one_finds(make_server, connect):
    """A q of the same word 66 times, or of 100 one-letter words, matches as the distinct words
    do (each word a prefix, a one-letter word a whole word)."""
    server = make_server(**FAST_LIMITS)
    peer = connect(server.url)
    peer.join("lobby")
    peer.chat_all("lobby", ["a b c deploy", "deploy a", "nothing here"])
    assert [m["seq"] for m in search(peer, q="dep " * 50)["messages"]] == [2, 1]
    assert [m["seq"] for m in search(peer, q="a " * 100)["messages"]] == [2, 1]
    assert [m["seq"] for m in search(peer, q="b a " * 50)["messages"]] == [1]
