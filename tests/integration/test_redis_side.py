"""Typing, read markers and DMs that wait across two roomchat processes on one Redis (a real
redis-server, real processes): typing reaches members on the other process; marks and kept DMs
are facts of the whole server, found by a connection on either process."""

import time

import pytest

from chatserver.engines.redis import RedisEngine
from chatserver.protocol import MAX_MARKS, TYPING_INTERVAL
from tests.helpers import SECRET, frames_until, token, wait_for, with_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair(cluster):
    """Two roomchat processes with the same token secret on this test's Redis."""
    return cluster(2, "--token-secret", SECRET, "--typing-max-members", "3")


def test_typing_reaches_members_on_both_processes_not_the_sender(pair, peers):
    """ann on A types: carol on A and bob on B get `typing`, ann gets nothing; a burst counts once
    per TYPING_INTERVAL; over --typing-max-members (3) nobody gets it."""
    a, b = pair
    ann, bob, carol = peers(with_token(a.url, token("ann"))), peers(b.url), peers(a.url)
    for peer in (ann, bob, carol):
        peer.join("lobby")
    for _ in range(2):
        ann.recv_type("presence")
    bob.recv_type("presence")
    started = time.monotonic()
    for _ in range(10):
        ann.send(type="typing", room="lobby")
    ann.send(type="chat", room="lobby", text="sent")
    elapsed_bound = None
    for peer in (bob, carol):
        frames = frames_until(peer, "chat")
        elapsed_bound = 1 + (time.monotonic() - started) // TYPING_INTERVAL
        typing = [f for f in frames if f["type"] == "typing"]
        assert typing and all(f == {"type": "typing", "room": "lobby", "nick": "ann"} for f in typing)
        assert len(typing) <= elapsed_bound
    assert [f["type"] for f in frames_until(ann, "chat")] == ["chat"]
    dave = peers(b.url)
    dave.join("lobby")
    for peer in (ann, bob, carol):
        peer.recv_type("presence")
    time.sleep(TYPING_INTERVAL)
    ann.send(type="typing", room="lobby")
    ann.send(type="chat", room="lobby", text="four of us")
    assert [f["type"] for f in frames_until(bob, "chat")] == ["chat"]


def test_marks_set_on_one_process_are_found_on_the_other(pair, peers):
    """ann marks lobby on A; her next connection, on B, gets `welcome.marks` and `joined.mark`,
    and a lower mark there does not move it back."""
    a, b = pair
    ann = peers(with_token(a.url, token("ann")))
    ann.join("lobby")
    ann.chat_all("lobby", ["one", "two", "three"])
    assert ann.request(type="mark", room="lobby", seq=3)["seq"] == 3
    ann.close()
    again = peers(with_token(b.url, token("ann")), timeout=15)
    assert again.welcome["marks"] == {"lobby": 3}
    assert again.join("lobby")["mark"] == 3
    assert again.request(type="mark", room="lobby", seq=1)["seq"] == 3


def test_a_dm_kept_on_one_process_is_delivered_once_on_the_other(pair, peers):
    """bob on B writes to ann, whose token was seen on A and who is offline: kept (stored); ann's
    next connection, on A, gets it after `welcome` with its original ts, and the next one nothing;
    the 101st kept DM is recipient_busy; a nick no token reserves is no_such_user."""
    a, b = pair
    peers(with_token(a.url, token("ann"))).close()
    bob = peers(b.url)
    assert bob.request(type="dm", to="nobody", text="x")["code"] == "no_such_user"
    first = wait_for(lambda: (r := bob.request(type="dm", to="ann", text="0")).get("stored") and r, timeout=15)
    for n in range(1, 100):
        bob.send(type="dm", to="ann", text=str(n))
    assert all(bob.recv().get("stored") for _ in range(99))
    assert bob.request(type="dm", to="ann", text="101st")["code"] == "recipient_busy"
    ann = peers(with_token(a.url, token("ann")))
    got = [ann.recv() for _ in range(100)]
    assert [e["text"] for e in got] == [str(n) for n in range(100)]
    assert got[0] == {k: v for k, v in first.items() if k != "id"}
    ann.close()
    again = peers(with_token(b.url, token("ann")), timeout=15)
    assert again.request(type="ping") == {"type": "pong"}


def test_redis_keeps_marks_never_back_newest_first_and_bounded(redis_server):
    """The Redis engine's marks: never back; listed marked last first; past MAX_MARKS the one
    marked longest ago goes; DMs wait up to `most` and are taken once."""
    engine = RedisEngine(redis_server.url)
    try:
        assert engine.mark("ann", "lobby") is None
        assert engine.set_mark("ann", "lobby", 5) == 5 and engine.set_mark("ann", "lobby", 2) == 5
        for n in range(MAX_MARKS):
            engine.set_mark("ann", f"r{n}", n + 1)
        marks = engine.marks("ann")
        assert len(marks) == MAX_MARKS and "lobby" not in marks
        assert list(marks)[:2] == [f"r{MAX_MARKS - 1}", f"r{MAX_MARKS - 2}"] and marks["r0"] == 1
        assert [engine.keep_dm("ann", {"text": str(n)}, 2) for n in range(3)] == [True, True, False]
        assert engine.take_dms("ann") == [{"text": "0"}, {"text": "1"}] and engine.take_dms("ann") == []
    finally:
        engine.close()
