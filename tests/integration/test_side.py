"""Typing, read markers and DMs that wait, over real sockets, on the SQLite engine (a history file
of the test's own) and the memory engine: what reaches whom, the bounds, and what survives a
reconnect and a restart."""

import time

import pytest

from chatserver.protocol import MAX_MARKS, TYPING_INTERVAL
from tests.helpers import FAST_LIMITS, SECRET, frames_until, token, wait_for, with_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "memory"])
def side_server(request, make_server, tmp_path):
    """side_server(**settings) -> a server with a token secret and no rate limits in the way, on
    the SQLite engine (its own file) or the memory engine."""
    db = str(tmp_path / "side.db") if request.param == "sqlite" else ":memory:"
    return lambda **overrides: make_server(**{"db": db, "token_secret": SECRET, **FAST_LIMITS, **overrides})


def in_lobby(server, peers, *names):
    """Peers with tokens for `names`, all in lobby, each having seen the others join."""
    joined = []
    for name in names:
        peer = peers(with_token(server.url, token(name)))
        peer.join("lobby")
        for earlier in joined:
            assert earlier.recv_type("presence")["nick"] == name
        joined.append(peer)
    return joined


# -- typing ------------------------------------------------------------------------------------


def test_typing_reaches_every_other_member_and_not_the_sender(side_server, peers):
    """A typing request: the room's other members get `typing` with the sender's nick (no seq, no
    id); the sender gets no reply (its next frame is the pong of its next ping)."""
    ann, bob, carol = in_lobby(side_server(), peers, "ann", "bob", "carol")
    ann.send(type="typing", room="lobby", id=7)
    assert bob.recv() == {"type": "typing", "room": "lobby", "nick": "ann"}
    assert carol.recv() == {"type": "typing", "room": "lobby", "nick": "ann"}
    assert ann.request(type="ping") == {"type": "pong"}


def test_typing_is_at_most_one_per_nick_and_room_every_3_seconds(side_server, peers):
    """Typing sent in a burst: the others get at most one per TYPING_INTERVAL seconds of the burst
    (the rest are dropped without an error), and typing in another room counts apart."""
    server = side_server()
    ann, bob = in_lobby(server, peers, "ann", "bob")
    ann.join("side")
    bob.join("side")
    ann.recv_type("presence")
    started = time.monotonic()
    for _ in range(20):
        ann.send(type="typing", room="lobby")
    ann.send(type="typing", room="side")
    ann.send(type="chat", room="lobby", text="done")
    frames = frames_until(bob, "chat")
    elapsed = time.monotonic() - started
    typing = [f for f in frames if f["type"] == "typing"]
    assert {"type": "typing", "room": "side", "nick": "ann"} in typing
    lobby = [f for f in typing if f["room"] == "lobby"]
    assert 1 <= len(lobby) <= 1 + elapsed // TYPING_INTERVAL
    assert [f["type"] for f in frames_until(ann, "chat")] == ["chat"]  # no error for those dropped


def test_typing_is_not_sent_in_a_room_over_typing_max_members(side_server, peers):
    """With --typing-max-members 2, typing in a room of three reaches nobody (the chat after it
    comes first); in a room of two it does."""
    server = side_server(typing_max_members=2)
    ann, bob, carol = in_lobby(server, peers, "ann", "bob", "carol")
    ann.send(type="typing", room="lobby")
    ann.send(type="chat", room="lobby", text="after")
    assert [f["type"] for f in frames_until(bob, "chat")] == ["chat"]
    carol.request(type="leave", room="lobby")
    bob.recv_type("presence")
    time.sleep(TYPING_INTERVAL)  # past the first one's interval
    ann.send(type="typing", room="lobby")
    assert bob.recv() == {"type": "typing", "room": "lobby", "nick": "ann"}


def test_typing_outside_a_room_is_not_in_room_and_a_muted_members_is_dropped(side_server, peers):
    """Typing in a room you are not in: not_in_room. A muted member's typing reaches nobody."""
    server = side_server()
    op = peers(with_token(server.url, token("op", op=True)))
    ann, bob = in_lobby(server, peers, "ann", "bob")
    reply = ann.request(type="typing", room="elsewhere", id=1)
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "not_in_room", 1)
    op.request(type="mute", room="lobby", nick="ann", duration=60)
    assert bob.recv_type("mute")["nick"] == "ann"
    ann.recv_type("mute")
    ann.send(type="typing", room="lobby")
    op.request(type="mute", room="lobby", nick="ann", duration=0)
    assert [f["type"] for f in frames_until(bob, "mute")] == ["mute"]


def test_in_a_moderated_room_only_operators_typing_reaches_the_others(side_server, peers):
    """In a moderated room a member's typing is dropped silently; an operator's reaches the others."""
    server = side_server()
    op, ann, bob = in_lobby(server, peers, "op", "ann", "bob")
    op.ws.close()
    op = peers(with_token(server.url, token("op", op=True)))
    op.join("lobby")
    for peer in (ann, bob):
        peer.recv_type("presence")  # op's leave
        peer.recv_type("presence")  # and join again, now an operator
    op.request(type="mode", room="lobby", moderated=True)
    ann.recv_type("mode")
    bob.recv_type("mode")
    ann.send(type="typing", room="lobby")
    assert ann.request(type="ping") == {"type": "pong"}  # ann's typing was handled (dropped) by now
    op.send(type="typing", room="lobby")
    op.send(type="chat", room="lobby", text="go")
    frames = frames_until(bob, "chat")
    assert frames[:-1] == [{"type": "typing", "room": "lobby", "nick": "op"}] and frames[-1]["text"] == "go"


# -- read markers ------------------------------------------------------------------------------


def test_marks_never_go_back_are_capped_and_come_back_with_the_token(side_server, peers):
    """A mark answers the mark now: never lower than before, never past the room's last seq; a
    new connection with the same token gets them in `welcome.marks` and `joined.mark`."""
    server = side_server()
    (ann,) = in_lobby(server, peers, "ann")
    ann.chat_all("lobby", ["one", "two", "three"])
    assert ann.request(type="mark", room="lobby", seq=2, id=1) == {"type": "mark", "room": "lobby", "seq": 2, "id": 1}
    assert ann.request(type="mark", room="lobby", seq=1)["seq"] == 2
    assert ann.request(type="mark", room="lobby", seq=99)["seq"] == 3
    ann.close()
    again = peers(with_token(server.url, token("ANN")))
    assert again.welcome["marks"] == {"lobby": 3}
    assert again.join("lobby")["mark"] == 3
    other = peers(with_token(server.url, token("bob")))
    assert "marks" not in other.welcome and "mark" not in other.join("lobby")


def test_marks_are_listed_newest_first(side_server, peers):
    """`welcome.marks` lists the rooms marked last first."""
    server = side_server()
    ann = peers(with_token(server.url, token("ann")))
    for room in ("a", "b", "c"):
        ann.join(room)
        ann.chat_all(room, ["x"])
    for room in ("b", "c", "a"):
        ann.request(type="mark", room=room, seq=1)
    assert list(peers(with_token(server.url, token("ann"))).welcome["marks"]) == ["a", "c", "b"]


def test_marks_survive_a_restart_with_sqlite(make_server, peers, tmp_path):
    """With the SQLite engine marks are kept in the history file: after a restart the token's
    next connection gets them."""
    db = str(tmp_path / "h.db")
    first = make_server(db=db, token_secret=SECRET)
    ann = peers(with_token(first.url, token("ann")))
    ann.join("lobby")
    ann.chat_all("lobby", ["one", "two"])
    assert ann.request(type="mark", room="lobby", seq=2)["seq"] == 2
    ann.close()
    port = first.port
    first.shutdown(timeout=0.5)
    again = make_server(db=db, token_secret=SECRET, port=port)
    back = peers(with_token(again.url, token("ann")))
    assert back.welcome["marks"] == {"lobby": 2}
    assert back.request(type="mark", room="lobby", seq=1)["code"] == "not_in_room"
    assert back.join("lobby")["mark"] == 2
    assert back.request(type="mark", room="lobby", seq=1)["seq"] == 2


def test_without_a_token_marks_live_on_the_connection(side_server, peers):
    """An anonymous connection's marks come back in `joined.mark` on that connection only; a room
    without history gets no mark (0); a bad seq is bad_message."""
    server = side_server()
    guest = peers(server.url)
    guest.join("lobby")
    guest.chat_all("lobby", ["one"])
    assert guest.request(type="mark", room="lobby", seq=1)["seq"] == 1
    guest.request(type="leave", room="lobby")
    assert guest.join("lobby")["mark"] == 1
    assert "mark" not in peers(server.url).join("lobby")
    guest.join("empty")
    assert guest.request(type="mark", room="empty", seq=5)["seq"] == 0
    assert "mark" not in guest.join("empty")
    assert guest.request(type="mark", room="lobby", seq=-1)["code"] == "bad_message"
    assert guest.request(type="mark", room="lobby")["code"] == "bad_message"
    assert "marks" not in peers(server.url).welcome


def test_marks_are_bounded_per_identity(side_server, peers):
    """Past MAX_MARKS rooms, marking a new room forgets the one marked longest ago."""
    server = side_server(max_rooms=MAX_MARKS + 1)
    ann = peers(with_token(server.url, token("ann")))
    for n in range(MAX_MARKS + 1):
        ann.send(type="join", room=f"r{n}")
        ann.send(type="chat", room=f"r{n}", text="x")
    for _ in range(MAX_MARKS + 1):
        ann.recv_type("chat")
    for n in range(MAX_MARKS + 1):
        ann.send(type="mark", room=f"r{n}", seq=1)
    for _ in range(MAX_MARKS + 1):
        ann.recv_type("mark")
    marks = peers(with_token(server.url, token("ann"))).welcome["marks"]
    assert len(marks) == MAX_MARKS and "r0" not in marks and next(iter(marks)) == f"r{MAX_MARKS}"


# -- DMs that wait -----------------------------------------------------------------------------


def test_a_dm_to_an_offline_token_holder_waits_for_its_next_welcome(side_server, peers):
    """A DM to a token's nick while nobody has it: the sender's copy says stored; the holder's
    next connection gets it right after `welcome`, with its original ts, once."""
    server = side_server()
    peers(with_token(server.url, token("ann"))).close()
    bob = peers(server.url)
    wait_for(lambda: bob.request(type="dm", to="ann", text="ping?", id=2).get("stored"), timeout=10)
    copy = bob.request(type="dm", to="ANN", text="are you there?", id=3)
    assert copy["stored"] is True and copy["from"] == bob.nick and copy["id"] == 3
    time.sleep(0.05)  # the recipient's ts must be the original, not the delivery's
    ann = peers(with_token(server.url, token("ann")))
    first, second = ann.recv(), ann.recv()
    assert first["text"] == "ping?" and first["stored"] is True
    assert {k: v for k, v in copy.items() if k != "id"} == {**second, "to": "ANN"}
    assert ann.request(type="ping") == {"type": "pong"}
    ann.close()
    assert peers(with_token(server.url, token("ann"))).request(type="ping") == {"type": "pong"}  # delivered once


def test_offline_dms_are_bounded_and_never_kept_for_a_nick_no_token_reserves(side_server, peers):
    """At most --offline-dms wait per recipient (the next is recipient_busy); a nick no token
    reserves gets no_such_user as before; a live DM is not stored."""
    server = side_server(offline_dms=100)
    peers(with_token(server.url, token("ann"))).close()
    bob = peers(server.url)
    assert bob.request(type="dm", to="nobody", text="x")["code"] == "no_such_user"
    wait_for(lambda: bob.request(type="dm", to="ann", text="0").get("stored"), timeout=10)
    for n in range(1, 100):
        bob.send(type="dm", to="ann", text=str(n))
    assert all(bob.recv().get("stored") for _ in range(99))
    refused = bob.request(type="dm", to="ann", text="101st")
    assert refused["code"] == "recipient_busy" and "100" in refused["message"]
    ann = peers(with_token(server.url, token("ann")))
    assert [ann.recv()["text"] for _ in range(100)] == [str(n) for n in range(100)]
    live = bob.request(type="dm", to="ann", text="live")
    assert "stored" not in live and ann.recv() == {k: v for k, v in live.items()}


def test_offline_dms_off_is_no_such_user(side_server, peers):
    """--offline-dms 0: a DM to an offline token holder is no_such_user, as without tokens."""
    server = side_server(offline_dms=0)
    peers(with_token(server.url, token("ann"))).close()
    bob = peers(server.url)
    wait_for(lambda: bob.request(type="dm", to="ann", text="x").get("code") == "no_such_user", timeout=10)


def test_dms_wait_for_an_auth_too(side_server, peers):
    """An anonymous connection that presents the token in `auth` gets the DMs kept for its nick
    right after the `auth` reply."""
    server = side_server()
    peers(with_token(server.url, token("ann"))).close()
    bob = peers(server.url)
    wait_for(lambda: bob.request(type="dm", to="ann", text="later").get("stored"), timeout=10)
    guest = peers(server.url)
    frames = [guest.request(type="auth", token=token("ann"))]
    while frames[-1]["type"] != "dm":
        frames.append(guest.recv())
    assert [f["type"] for f in frames] == ["nick", "auth", "dm"] and frames[-1]["text"] == "later"


def test_dms_kept_survive_a_restart_with_sqlite(make_server, peers, tmp_path):
    """With the SQLite engine a kept DM is in the history file: after a restart it still waits."""
    db = str(tmp_path / "h.db")
    first = make_server(db=db, token_secret=SECRET)
    peers(with_token(first.url, token("ann"))).close()
    bob = peers(first.url)
    wait_for(lambda: bob.request(type="dm", to="ann", text="kept").get("stored"), timeout=10)
    bob.close()
    port = first.port
    first.shutdown(timeout=0.5)
    again = make_server(db=db, token_secret=SECRET, port=port)
    ann = peers(with_token(again.url, token("ann")))
    assert ann.recv()["text"] == "kept"
