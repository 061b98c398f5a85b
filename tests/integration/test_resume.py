"""Resume tokens: after a silent network drop, a client takes its nick and rooms back at once."""

import time

import pytest
import websocket

from tests.helpers import SECRET, events_until, token, wait_for, with_token


def test_resume_after_a_silent_drop_takes_back_nick_and_rooms(server, relay, connect, peers):
    """A client whose connection vanished without a FIN reconnects with its resume token: at once
    (not after the old connection's ping timeout) it has its nick and rooms back, the old
    connection is closed with 4002, and the room sees no leave/join flap; `join` with `after`
    replays what it missed."""
    ann = peers(f"ws://127.0.0.1:{relay.port}/")
    ann.set_nick("ann")
    ann.join("lobby")
    bob = connect()
    bob.join("lobby")
    token = ann.welcome["resume"]
    relay.go_silent()
    bob.send(type="chat", room="lobby", text="while you were gone")
    bob.recv_type("chat")
    started = time.monotonic()
    again = peers(f"{server.url}?resume={token}")
    assert again.welcome["nick"] == "ann" and again.welcome["resumed"] is True
    assert again.welcome["rooms"] == ["lobby"] and again.welcome["resume"] != token
    joined = again.join("lobby", after=0)
    assert [e["text"] for e in joined["history"]] == ["while you were gone"]
    assert joined["members"] == ["ann", bob.nick]
    assert time.monotonic() - started < 10  # not after the silent connection's ping timeout (20 s)
    bob.send(type="chat", room="lobby", text="welcome back")
    assert again.recv_type("chat")["text"] == "welcome back"
    bob.recv_type("chat")
    assert bob.request(type="who", room="lobby")["members"] == ["ann", bob.nick]
    bob.ws.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):  # no presence flap for the room
        while True:
            event = bob.recv()
            assert event["type"] != "presence", event
    wait_for(lambda: server.registry.stats()["connections"] == 2)  # the old connection is gone


def test_resume_closes_the_old_connection_with_4002(server, connect, peers):
    """If the old connection is still open, it gets close 4002 "replaced by a new connection"."""
    old = connect()
    old.set_nick("ann")
    again = peers(f"{server.url}?resume={old.welcome['resume']}")
    assert again.welcome["nick"] == "ann"
    frame = old.ws.recv_data_frame(True)[1]
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 4002 and frame.data[2:] == b"replaced by a new connection"


@pytest.mark.parametrize("token", ["nonsense", ""])
def test_unknown_or_spent_token_gets_a_guest(server, connect, peers, token):
    """An unknown token, or one whose client has left, gives a fresh guest nick (resumed absent)."""
    if not token:
        first = connect()
        first.set_nick("ann")
        token = first.welcome["resume"]
        first.close()
        wait_for(lambda: server.registry.stats()["connections"] == 0)
    peer = peers(f"{server.url}?resume={token}")
    assert peer.welcome["nick"].startswith("guest-") and "resumed" not in peer.welcome



def test_a_token_holder_resumes_without_a_presence_flap(make_server, peers):
    """A connection with an identity token that also presents its resume token takes its client
    back like an anonymous one (rooms kept, no leave/join for the room, old connection closed
    with 4002, the newer token in force); a resume token of another nick's client is ignored."""
    server = make_server(token_secret=SECRET)
    ann = peers(with_token(server.url, token("ann")))
    ann.join("lobby")
    bob = peers(with_token(server.url, token("bob")))
    bob.join("lobby")
    assert ann.recv_type("presence")["nick"] == "bob"
    again = peers(with_token(server.url, token("ann", ttl=7200)) + f"&resume={ann.welcome['resume']}")
    assert again.welcome["resumed"] is True and again.welcome["rooms"] == ["lobby"]
    assert again.welcome["auth"]["exp"] > ann.welcome["auth"]["exp"]
    assert again.join("lobby", after=0)["members"] == ["ann", "bob"]
    frame = ann.ws.recv_data_frame(True)[1]
    assert int.from_bytes(frame.data[:2], "big") == 4002
    bob.send(type="chat", room="lobby", text="still here?")
    assert [e["type"] for e in events_until(bob, lambda e: e["type"] == "chat")] == ["chat"]  # no presence before it
    assert again.recv_type("chat")["text"] == "still here?"
    assert bob.request(type="who", room="lobby")["members"] == ["ann", "bob"]

    carol = peers(with_token(server.url, token("carol")) + f"&resume={again.welcome['resume']}")
    assert carol.welcome["nick"] == "carol" and "resumed" not in carol.welcome
    assert again.request(type="ping") == {"type": "pong"}  # ann's connection was left alone


def test_a_token_holders_resume_token_alone_gets_a_fresh_guest(make_server, peers):
    """A resume token of a client with an identity, presented without that identity's token (a
    stolen one), gets a fresh guest and leaves the holder's connection alone."""
    server = make_server(token_secret=SECRET)
    op = peers(with_token(server.url, token("op", op=True)))
    op.join("lobby")
    thief = peers(f"{server.url}?resume={op.welcome['resume']}")
    assert thief.nick.startswith("guest-") and "resumed" not in thief.welcome and "auth" not in thief.welcome
    assert op.request(type="ping") == {"type": "pong"}
    assert thief.request(type="who", room="lobby")["members"] == ["op"]
