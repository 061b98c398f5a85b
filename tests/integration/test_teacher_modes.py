"""The teacher's room over real sockets: room modes (moderated, slow), and rules that renaming does
not escape, on the memory and the SQLite engines."""

import pytest

from tests.helpers import SECRET, seated

pytestmark = pytest.mark.timeout(30)




@pytest.fixture(params=["memory", "sqlite"])
def server(request, make_server, tmp_path):
    db = ":memory:" if request.param == "memory" else str(tmp_path / "h.db")
    return make_server(db=db, token_secret=SECRET)


@pytest.fixture
def room(server, peers):
    """An operator `op`, and students `stud1` and `stud2` (anonymous), all in class with every join seen."""
    return seated(server.url, peers, "class", "stud1", "stud2")


def test_mode_is_an_event_in_order_and_shows_in_joined(server, room, peers):
    """The operator's mode is answered with the event naming who set it; members get it between the
    chats around it; a later joiner's `joined` carries `mode`, left out again once back to default."""
    op, stud1, stud2 = room
    stud2.request(type="chat", room="class", text="before")
    assert op.recv_type("chat")["text"] == "before"
    reply = op.request(type="mode", room="class", moderated=True, id=3)
    assert reply == {"type": "mode", "room": "class", "moderated": True, "slow": 0, "by": "op", "id": 3}
    stud2.recv_type("mode")
    op.request(type="chat", room="class", text="after")
    seen = [stud1.recv() for _ in range(3)]
    assert [e["type"] for e in seen] == ["chat", "mode", "chat"]
    assert seen[1] == {"type": "mode", "room": "class", "moderated": True, "slow": 0, "by": "op"}
    assert peers(server.url).join("class")["mode"] == {"moderated": True, "slow": 0}
    # either field alone changes only itself
    op.send(type="mode", room="class", slow=30)
    assert op.recv_type("mode")["moderated"] is True
    op.send(type="mode", room="class", moderated=False)
    assert op.recv_type("mode")["slow"] == 30
    assert peers(server.url).join("class")["mode"] == {"moderated": False, "slow": 30}
    op.send(type="mode", room="class", slow=0)
    op.recv_type("mode")
    assert "mode" not in peers(server.url).join("class")


def test_moderated_room_lets_only_operators_chat(room):
    """In a moderated room a member's chat gets `moderated` (nothing is sent); the operator chats;
    lifting it lets members chat again."""
    op, stud1, stud2 = room
    op.request(type="mode", room="class", moderated=True)
    stud1.recv_type("mode"), stud2.recv_type("mode")
    refused = stud1.request(type="chat", room="class", text="may I?", id=8)
    assert (refused["type"], refused["code"], refused["id"]) == ("error", "moderated", 8)
    assert op.request(type="chat", room="class", text="Exam on Friday")["text"] == "Exam on Friday"
    assert stud2.recv_type("chat")["text"] == "Exam on Friday"
    op.request(type="mode", room="class", moderated=False)
    stud1.recv_type("mode")
    assert stud1.request(type="chat", room="class", text="thanks")["text"] == "thanks"
    assert stud2.recv_type("chat")["text"] == "thanks"


def test_slow_mode_spaces_a_members_chats_and_spares_operators(room):
    """In slow mode a member's second chat in the interval gets `slow_mode` with `retry_after` (whole
    seconds, >= 1), a rename does not reset it, another room is not affected; the operator chats freely."""
    op, stud1, stud2 = room
    op.request(type="mode", room="class", slow=600)
    stud1.recv_type("mode"), stud2.recv_type("mode")
    assert stud1.request(type="chat", room="class", text="first")["text"] == "first"
    refused = stud1.request(type="chat", room="class", text="second", id=4)
    assert (refused["code"], refused["id"]) == ("slow_mode", 4)
    assert isinstance(refused["retry_after"], int) and 1 <= refused["retry_after"] <= 600
    stud1.set_nick("stud1b")
    assert stud1.request(type="chat", room="class", text="renamed")["code"] == "slow_mode"
    stud1.join("other")
    assert stud1.request(type="chat", room="other", text="elsewhere")["text"] == "elsewhere"
    assert [op.ask(type="chat", room="class", text=t)["text"] for t in "ab"] == ["a", "b"]
    assert stud2.ask(type="chat", room="class", text="mine")["type"] == "chat"  # its own interval
    op.ask(type="mode", room="class", slow=0)
    assert stud1.ask(type="chat", room="class", text="free")["text"] == "free"


@pytest.mark.parametrize("bad", [{}, {"moderated": "yes"}, {"slow": -1}, {"slow": 3601}, {"slow": 1.5},
                                 {"slow": True}])
def test_bad_mode_requests_are_refused_and_change_nothing(room, peers, server, bad):
    """A mode with neither field, a non-boolean `moderated`, or `slow` outside 0..3600 whole seconds:
    bad_message, and the room keeps its mode."""
    op, _, _ = room
    assert op.request(type="mode", room="class", **bad)["code"] == "bad_message"
    assert "mode" not in peers(server.url).join("class")


def test_non_operators_cannot_set_the_mode(room):
    """A student's mode request is forbidden, and nobody sees anything."""
    _, stud1, stud2 = room
    assert stud1.request(type="mode", room="class", moderated=True)["code"] == "forbidden"
    assert stud2.request(type="ping") == {"type": "pong"}


def test_a_muted_member_that_renames_is_still_muted(room):
    """A mute binds the connection: after a rename, its chats are still forbidden (with the time left);
    lifting the mute frees it under its new nick."""
    op, stud1, stud2 = room
    op.request(type="mute", room="class", nick="stud1", duration=60)
    stud1.recv_type("mute"), stud2.recv_type("mute")
    stud1.set_nick("innocent")
    refused = stud1.request(type="chat", room="class", text="hi")
    assert refused["code"] == "forbidden" and 1 <= refused["retry_after"] <= 60
    op.request(type="mute", room="class", nick="stud1", duration=0)
    stud1.recv_type("mute")
    assert stud1.request(type="chat", room="class", text="free")["text"] == "free"


def test_a_muted_nick_not_in_the_room_stays_muted_after_a_rename(server, room, peers):
    """A connected nick muted in a room it is not in cannot rename, join and chat there."""
    op, _, _ = room
    dave = peers(server.url)
    dave.set_nick("dave")
    op.request(type="mute", room="class", nick="dave", duration=60)
    dave.set_nick("dave2")
    dave.join("class")
    assert dave.request(type="chat", room="class", text="sneaky")["code"] == "forbidden"


def test_a_banned_member_that_renames_cannot_rejoin(room):
    """A ban binds the connection: renamed, it still cannot join the room on that connection."""
    op, stud1, _ = room
    op.request(type="ban", room="class", nick="stud1", duration=60)
    stud1.recv_type("ban")
    stud1.set_nick("someone_else")
    refused = stud1.request(type="join", room="class")
    assert refused["code"] == "forbidden" and 1 <= refused["retry_after"] <= 60
    op.ask(type="ban", room="class", nick="stud1", duration=0)  # lifted by the nick it was banned as
    assert stud1.join("class")["room"] == "class"


def test_a_member_cannot_take_a_nick_banned_from_its_room(room):
    """Renaming into a nick banned from a room you are in is forbidden (IRC's ERR_BANONCHAN), look-alike
    spellings too; the nick is free to take once you leave that room."""
    op, stud1, _ = room
    op.request(type="ban", room="class", nick="troll", duration=60)
    stud1.recv_type("ban")
    for spelling in ("troll", "TRO11"):
        refused = stud1.request(type="nick", nick=spelling, id=2)
        assert (refused["code"], refused["id"]) == ("forbidden", 2), refused
        assert "banned from 'class'" in refused["message"]
    stud1.request(type="leave", room="class")
    stud1.set_nick("troll")
