"""search from hostile or careless clients over real sockets: what a search may cost the others."""

import threading

from chatserver.engines import memory
from tests.helpers import FAST_LIMITS
from tests.integration.test_search import search


def test_a_memory_search_scans_without_holding_up_chats(make_server, connect, monkeypatch):
    """The memory engine scans a room outside its lock: while one member's search is still
    comparing texts (held here inside the scan), chats in every room are stored and delivered."""
    server = make_server(**FAST_LIMITS)
    searcher, chatter = connect(server.url), connect(server.url)
    searcher.join("big")
    searcher.chat_all("big", ["needle one", "needle two"])
    chatter.join("other")
    inside, release = threading.Event(), threading.Event()
    real = memory.matches

    def slow(words, text):
        inside.set()
        release.wait(30)
        return real(words, text)

    monkeypatch.setattr(memory, "matches", slow)
    searcher.send(type="search", room="big", q="needle", id="s")
    assert inside.wait(10)
    try:
        chatter.send(type="chat", room="other", text="not held up")
        assert chatter.recv_type("chat")["text"] == "not held up"
    finally:
        release.set()
    assert [m["text"] for m in searcher.recv_type("search")["messages"]] == ["needle two", "needle one"]


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
