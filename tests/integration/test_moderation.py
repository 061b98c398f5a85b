"""Moderation over real sockets: topic, kick, ban and mute by an operator (a token with `op`),
each an event in the room's stream, and `forbidden` for everyone else."""

import pytest

from tests.helpers import SECRET, seated, token, wait_for, with_token

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server(make_server):
    return make_server(token_secret=SECRET)


@pytest.fixture
def room(server, peers):
    """An operator `op`, and `bob` and `carol` (anonymous), all in lobby with every join seen."""
    return seated(server.url, peers, "lobby", "bob", "carol")


def test_topic_is_an_event_in_order_and_shows_in_joined(server, room, peers):
    """The operator's topic is answered with the event (and its id); members get it, with who set it,
    between the chats around it; a later joiner's `joined` carries it; "" clears it."""
    op, bob, carol = room
    carol.request(type="chat", room="lobby", text="before")
    assert op.recv_type("chat")["text"] == "before"
    reply = op.request(type="topic", room="lobby", topic="Exam at 10", id=4)
    assert reply == {"type": "topic", "room": "lobby", "topic": "Exam at 10", "by": "op", "id": 4}
    carol.recv_type("topic")
    carol.request(type="chat", room="lobby", text="after")
    seen = [bob.recv() for _ in range(3)]
    assert [e.get("text", e.get("topic")) for e in seen] == ["before", "Exam at 10", "after"]
    assert peers(server.url).join("lobby")["topic"] == "Exam at 10"
    assert op.ask(type="topic", room="lobby", topic="")["topic"] == ""  # applied before the next join
    assert "topic" not in peers(server.url).join("lobby")


def test_topic_survives_a_restart_with_sqlite(make_server, peers, tmp_path):
    """With the SQLite engine the topic is kept in the history file: a restarted server shows it."""
    db = str(tmp_path / "h.db")
    first = make_server(db=db, token_secret=SECRET)
    op = peers(with_token(first.url, token("op", op=True)))
    assert op.request(type="topic", room="lobby", topic="kept")["type"] == "topic"
    op.close()
    port = first.port
    first.shutdown(timeout=0.5)
    again = make_server(db=db, token_secret=SECRET, port=port)
    assert peers(again.url).join("lobby")["topic"] == "kept"


def test_kick_takes_a_member_out_and_everyone_sees_it(room):
    """A kick: the kicked client gets the event and is out (chat: not_in_room); the others get the
    event, then a presence leave; the kicked client may join again."""
    op, bob, carol = room
    reply = op.request(type="kick", room="lobby", nick="BOB", reason="spam", id=1)
    assert reply == {"type": "kick", "room": "lobby", "nick": "bob", "by": "op", "reason": "spam", "id": 1}
    event = {k: v for k, v in reply.items() if k != "id"}
    assert bob.recv() == event and carol.recv() == event
    assert carol.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    assert op.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    assert bob.request(type="chat", room="lobby", text="still here?")["code"] == "not_in_room"
    assert op.request(type="who", room="lobby")["members"] == ["op", "carol"]
    assert bob.join("lobby")["room"] == "lobby"


def test_kick_of_someone_not_in_the_room(room):
    """Kicking a nick that is not in the room: no_such_user, and nobody sees anything."""
    op, _, _ = room
    assert op.request(type="kick", room="lobby", nick="nobody")["code"] == "no_such_user"
    assert op.request(type="ping") == {"type": "pong"}


def test_ban_takes_a_member_out_and_keeps_it_out_until_lifted(room):
    """A ban: event to all, the member is out (others see it leave); its joins are forbidden with the
    remaining time; duration 0 lifts it, and that is an event too."""
    op, bob, carol = room
    reply = op.request(type="ban", room="lobby", nick="bob", duration=600, reason="rude")
    assert reply == {"type": "ban", "room": "lobby", "nick": "bob", "by": "op", "reason": "rude", "duration": 600}
    assert bob.recv() == reply
    assert carol.recv() == reply
    assert carol.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    refused = bob.request(type="join", room="lobby", id=9)
    assert (refused["code"], refused["id"]) == ("forbidden", 9) and 595 <= refused["retry_after"] <= 600
    assert "10 more minutes" in refused["message"]
    assert bob.join("elsewhere")["room"] == "elsewhere"  # one room only
    assert op.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    lifted = op.request(type="ban", room="lobby", nick="bob", duration=0)
    assert lifted["duration"] == 0 and carol.recv_type("ban") == lifted
    assert bob.join("lobby")["room"] == "lobby"


def test_a_ban_of_an_absent_nick_applies_when_it_comes_and_ends_by_itself(server, room, peers):
    """A nick banned while away cannot join; the ban ends on its own after its duration."""
    op, _, _ = room
    op.request(type="ban", room="lobby", nick="dave", duration=1)
    dave = peers(server.url)
    dave.set_nick("dave")
    assert dave.request(type="join", room="lobby")["code"] == "forbidden"
    wait_for(lambda: dave.request(type="join", room="lobby")["type"] == "joined", timeout=5, interval=0.2)


def test_mute_makes_a_member_read_only_until_lifted(room):
    """A mute: event to all; the muted member's chats are forbidden (with the remaining time) while it
    still reads the room; duration 0 lifts it."""
    op, bob, carol = room
    reply = op.request(type="mute", room="lobby", nick="bob", duration=120)
    assert bob.recv() == carol.recv() == reply
    refused = bob.request(type="chat", room="lobby", text="hey", id=2)
    assert (refused["code"], refused["id"]) == ("forbidden", 2) and 115 <= refused["retry_after"] <= 120
    carol.request(type="chat", room="lobby", text="you can still read")
    assert bob.recv_type("chat")["text"] == "you can still read"
    op.request(type="mute", room="lobby", nick="bob", duration=0)
    bob.recv_type("mute")
    assert bob.request(type="chat", room="lobby", text="back")["text"] == "back"


@pytest.mark.parametrize("request_", [
    {"type": "topic", "room": "lobby", "topic": "mine"},
    {"type": "kick", "room": "lobby", "nick": "carol"},
    {"type": "ban", "room": "lobby", "nick": "carol", "duration": 60},
    {"type": "mute", "room": "lobby", "nick": "carol", "duration": 60},
], ids=lambda r: r["type"])
def test_non_operators_are_forbidden(server, room, peers, request_):
    """An anonymous client, a token without op, and an operator outside its token's rooms: forbidden,
    and nothing happens."""
    _, bob, carol = room
    plain = peers(with_token(server.url, token("tok")))
    limited = peers(with_token(server.url, token("lim", op=True, rooms=["other"])))
    for peer in (bob, plain, limited):
        reply = peer.request(**request_, id=5)
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 5), reply
    assert carol.request(type="ping") == {"type": "pong"}  # carol saw nothing before it
    assert "topic" not in carol.join("lobby")
