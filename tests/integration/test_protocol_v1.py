"""Protocol v1 over a real server and real sockets: one test per row of PROTOCOL.md."""

import json
import time

import pytest

from tests.helpers import frame, wait_for


def test_welcome(connect):
    """On connect the server sends welcome with a guest nick, its version, epoch and limits."""
    peer = connect()
    w = peer.welcome
    assert w["type"] == "welcome" and w["nick"].startswith("guest-") and w["server"].startswith("roomchat/")
    assert w["limits"] == {"max_message_bytes": 65536, "max_text_chars": 2000, "max_rooms": 32,
                           "rate_burst": 20, "rate_per_second": 5.0, "address_rate_burst": 200,
                           "address_rate_per_second": 50.0, "max_reply_bytes": 262144, "max_outbox_bytes": 1048576,
                           "edit_window": 900}
    assert isinstance(w["epoch"], str) and w["epoch"]


def test_welcome_limits_come_from_configuration(make_server, connect):
    """The limits in welcome are the configured ones."""
    server = make_server(max_text_chars=100, rate_burst=7)
    limits = connect(server.url).welcome["limits"]
    assert limits["max_text_chars"] == 100 and limits["rate_burst"] == 7


def test_nick(connect):
    """nick: direct reply with old and new; room peers get the same event."""
    a, b = connect(), connect()
    a.join("lobby")
    b.join("lobby")
    a.recv_type("presence")
    old = a.nick
    assert a.request(type="nick", nick="alice", id="n1") == {"type": "nick", "old": old, "nick": "alice", "id": "n1"}
    assert b.recv_type("nick") == {"type": "nick", "old": old, "nick": "alice"}


def test_nick_taken(connect):
    """A nick held by someone else, in any case, is refused with nick_taken."""
    a, b = connect(), connect()
    a.set_nick("alice")
    assert b.request(type="nick", nick="ALICE")["code"] == "nick_taken"


def test_join_and_presence(connect):
    """join: joined with members and history; members already there get presence join."""
    a, b = connect(), connect()
    a.set_nick("alice")
    b.set_nick("bob")
    assert a.join("lobby") == {"type": "joined", "room": "lobby", "members": ["alice"], "history": []}
    a.send(type="chat", room="lobby", text="before bob")
    a.recv_type("chat")
    joined = b.join("lobby", id=9)
    assert joined["members"] == ["alice", "bob"] and joined["id"] == 9
    assert [m["text"] for m in joined["history"]] == ["before bob"]
    assert a.recv() == {"type": "presence", "room": "lobby", "event": "join", "nick": "bob"}


def test_leave(connect):
    """leave: left for the leaver, presence leave for the others."""
    a, b = connect(), connect()
    a.join("lobby")
    b.join("lobby")
    a.recv_type("presence")
    assert b.request(type="leave", room="lobby", id=1) == {"type": "left", "room": "lobby", "id": 1}
    assert a.recv() == {"type": "presence", "room": "lobby", "event": "leave", "nick": b.nick}


def test_chat(connect):
    """chat: every member, sender included, gets the event; only the sender's copy has the id."""
    a, b, c = connect(), connect(), connect()
    for p in (a, b, c):
        p.join("lobby")
    c.join("elsewhere")
    before = time.time()
    a.send(type="chat", room="lobby", text="hi", id="m1")
    mine, theirs, third = a.recv_type("chat"), b.recv_type("chat"), c.recv_type("chat")
    assert mine.pop("id") == "m1"
    assert mine == theirs == third
    assert theirs["room"] == "lobby" and theirs["from"] == a.nick and theirs["text"] == "hi" and theirs["seq"] == 1
    assert before - 1 <= theirs["ts"] <= time.time() + 1


def test_chat_unicode_roundtrip(connect):
    """Non-ASCII text arrives as sent."""
    a = connect()
    a.join("r")
    a.send(type="chat", room="r", text="héllo 🌍 مرحبا")
    assert a.recv_type("chat")["text"] == "héllo 🌍 مرحبا"


def test_dm(connect):
    """dm: the sender gets the event with its id; the recipient gets it too."""
    a, b = connect(), connect()
    a.set_nick("alice")
    b.set_nick("bob")
    reply = a.request(type="dm", to="Bob", text="psst", id=4)
    assert reply["type"] == "dm" and reply["from"] == "alice" and reply["to"] == "bob" and reply["id"] == 4
    got = b.recv()
    assert got == {k: v for k, v in reply.items() if k != "id"}


def test_dm_unknown_user(connect):
    """dm to a nick nobody has gets no_such_user."""
    assert connect().request(type="dm", to="ghost", text="boo")["code"] == "no_such_user"


def test_rooms(connect):
    """rooms: every room with members and its member count, sorted by name, and how many there are."""
    a, b = connect(), connect()
    a.join("zoo")
    a.join("lobby")
    b.join("lobby")
    a.send(type="rooms", id=2)
    assert a.recv_type("rooms") == {
        "type": "rooms", "count": 2, "rooms": [{"room": "lobby", "members": 2}, {"room": "zoo", "members": 1}], "id": 2}
    assert a.request(type="rooms", after="lobby")["rooms"] == [{"room": "zoo", "members": 1}]


def test_who(connect):
    """who: the nicks in a room, in join order."""
    a, b = connect(), connect()
    a.set_nick("alice")
    b.set_nick("bob")
    a.join("lobby")
    b.join("lobby")
    assert b.request(type="who", room="lobby") == {"type": "who", "room": "lobby", "count": 2,
                                                   "members": ["alice", "bob"]}


def test_history_before_and_after(connect):
    """history: before pages back, after pages forward, oldest first, limit respected."""
    a = connect()
    a.join("lobby")
    for i in range(10):
        a.send(type="chat", room="lobby", text=str(i))
        a.recv_type("chat")
    back = a.request(type="history", room="lobby", before=8, limit=3)
    assert back["type"] == "history" and [m["seq"] for m in back["messages"]] == [5, 6, 7]
    forward = a.request(type="history", room="lobby", after=7)
    assert [m["seq"] for m in forward["messages"]] == [8, 9, 10]
    assert a.request(type="history", room="lobby", limit=2)["messages"][0]["seq"] == 9


def test_history_members_only(connect):
    """history of a room you are not in is not_in_room."""
    a, b = connect(), connect()
    a.join("secret")
    assert b.request(type="history", room="secret")["code"] == "not_in_room"


def test_ping(connect):
    """ping gets pong."""
    assert connect().request(type="ping", id=1) == {"type": "pong", "id": 1}


@pytest.mark.parametrize(
    "msg, code",
    [
        ("{oops", "bad_json"),
        ('"just a string"', "bad_message"),
        ('{"type":"fly"}', "unknown_type"),
        ('{"type":"nick","nick":"bad nick"}', "bad_nick"),
        ('{"type":"join","room":"no/slash"}', "bad_room"),
        ('{"type":"chat","room":"lobby","text":"x"}', "not_in_room"),
        ('{"type":"dm","to":"ghost","text":"x"}', "no_such_user"),
        ('{"type":"join","room":"lobby","id":[1]}', "bad_message"),
    ],
)
def test_error_codes_keep_connection_open(connect, msg, code):
    """Each error code arrives as an error event and the connection keeps working."""
    peer = connect()
    peer.ws.send(msg)
    error = peer.recv()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert peer.request(type="ping") == {"type": "pong"}


def test_too_long_and_too_many_rooms(make_server, connect):
    """Text over max_text_chars is too_long; a room over max_rooms is too_many_rooms."""
    server = make_server(max_text_chars=10, max_rooms=2)
    peer = connect(server.url)
    peer.join("a")
    peer.join("b")
    assert peer.request(type="join", room="c")["code"] == "too_many_rooms"
    assert peer.request(type="chat", room="a", text="x" * 11)["code"] == "too_long"


def test_rate_limited_then_closed_for_flooding(make_server, raw):
    """Over the burst: rate_limited errors; flooding on at 3x the burst closes with 1008."""
    server = make_server(rate_burst=5, rate_per_second=0.01)
    peer = raw(server.port)
    for _ in range(5):
        peer.send_json(type="ping")
    assert [peer.read_json()["type"] for _ in range(5)] == ["pong"] * 5
    peer.send_json(type="ping", id="over")
    assert peer.read_json() == {"type": "error", "code": "rate_limited", "id": "over",
                                "message": "Slow down: at most 0.01 messages per second."}
    for _ in range(15):
        peer.send_json(type="ping")
    assert [peer.read_json()["code"] for _ in range(14)] == ["rate_limited"] * 14
    assert peer.read_close() == 1008
    assert peer.wait_eof()


def test_lone_surrogate_does_not_break_sending(connect):
    """A client's "\\ud800" escape (a lone surrogate, not Unicode) gets bad_json; the room keeps working."""
    a, b = connect(), connect()
    a.join("r")
    b.join("r")
    a.recv_type("presence")
    a.ws.send('{"type":"chat","room":"r","text":"\\ud800"}')
    assert a.recv()["code"] == "bad_json"
    a.ws.send('{"type":"ping","id":"\\udfff"}')
    assert a.recv()["code"] == "bad_json"
    a.send(type="chat", room="r", text="still fine")
    assert b.recv_type("chat")["text"] == "still fine"
    assert json.loads(json.dumps(a.recv_type("chat")))["seq"] == 1


def test_presence_on_abrupt_disconnect(server, connect, raw):
    """A client whose socket just closes (no close frame) leaves every room with presence leave."""
    watcher = connect()
    watcher.join("r1")
    watcher.join("r2")
    victim = raw()
    for room in ("r1", "r2"):
        victim.send_json(type="join", room=room)
        assert victim.read_json()["type"] == "joined"
    victim.close()
    leaves = [watcher.recv_type("presence") for _ in range(4)]
    seen = [(e["room"], e["event"]) for e in leaves]
    assert seen == [("r1", "join"), ("r2", "join"), ("r1", "leave"), ("r2", "leave")]
    wait_for(lambda: server.registry.stats()["connections"] == 1)


def test_requests_sent_together_answered_in_order(server, raw, connect):
    """Several requests in one TCP write (chats, a bad one, a ping) are answered in request order."""
    watcher = connect()
    watcher.join("r")
    client = raw()
    client.send_json(type="join", room="r")
    assert client.read_json()["type"] == "joined"
    burst = [{"type": "chat", "room": "r", "text": "a", "id": 1}, {"type": "chat", "room": "r", "text": "", "id": 2},
             {"type": "ping", "id": 3}, {"type": "chat", "room": "r", "text": "b", "id": 4}]
    client.send(b"".join(frame(0x1, json.dumps(m).encode()) for m in burst))
    replies = [client.read_json() for _ in range(4)]
    assert [(r["type"], r["id"]) for r in replies] == [("chat", 1), ("error", 2), ("pong", 3), ("chat", 4)]
    assert [watcher.recv_type("chat")["text"] for _ in range(2)] == ["a", "b"]
