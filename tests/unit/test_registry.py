"""Registry rules with fake connections whose outboxes are lists: no sockets."""

import threading

import pytest

from chatserver.config import Config
from chatserver.engines.memory import MemoryEngine
from chatserver.errors import ChatError
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.registry import ChatRequest, Registry
from tests.helpers import FakeConn, ManualEngine


@pytest.fixture
def registry():
    return Registry(MemoryEngine(), Config().limits())


def chat(registry, client, room, text, reply_id=None):
    registry.chat_many(client, [ChatRequest(room, text, reply_id)])


def connect(registry):
    conn = FakeConn()
    return registry.connect(conn, TokenBucket(20, 5)), conn


def test_connect_sends_welcome_with_guest_nick(registry):
    """A new client gets welcome first, with a free guest nick and the limits."""
    client, conn = connect(registry)
    [welcome] = conn.events()
    assert welcome["type"] == "welcome" and welcome["nick"] == client.nick and welcome["nick"].startswith("guest-")
    assert welcome["limits"]["max_rooms"] == 32


def test_guest_nick_skips_taken(registry):
    """A guest nick someone chose by hand is not handed out again."""
    a, _ = connect(registry)
    registry.set_nick(a, "GUEST-2")
    b, _ = connect(registry)
    assert b.nick == "guest-3"


def test_nick_unique_case_insensitive(registry):
    """Two clients cannot hold nicks that differ only in case."""
    a, _ = connect(registry)
    b, _ = connect(registry)
    registry.set_nick(a, "Alice")
    with pytest.raises(ChatError) as info:
        registry.set_nick(b, "alice")
    assert info.value.code == "nick_taken"
    registry.set_nick(a, "ALICE")  # changing the case of your own nick is fine


def test_nick_change_told_once_to_each_peer(registry):
    """A peer sharing two rooms with you hears of your new nick once."""
    a, _ = connect(registry)
    b, conn_b = connect(registry)
    for room in ("r1", "r2"):
        registry.join(a, room)
        registry.join(b, room)
    registry.set_nick(a, "alice")
    assert len(conn_b.events("nick")) == 1


def test_seq_continuous_and_same_for_all(registry):
    """Chat seqs start at 1, rise by one, and every member sees the same sequence."""
    clients = [connect(registry) for _ in range(3)]
    for client, _ in clients:
        registry.join(client, "r")
    for i in range(5):
        chat(registry, clients[i % 3][0], "r", f"m{i}")
    seqs = [[e["seq"] for e in conn.events("chat")] for _, conn in clients]
    assert seqs == [[1, 2, 3, 4, 5]] * 3


def test_concurrent_chats_keep_one_order(registry):
    """Four threads chatting at once: every member's seq list is identical and gapless."""
    clients = [connect(registry) for _ in range(4)]
    for client, _ in clients:
        registry.join(client, "r")

    def spam(client):
        for i in range(300):
            chat(registry, client, "r", str(i))

    threads = [threading.Thread(target=spam, args=(c,)) for c, _ in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _, conn in clients:
        assert [e["seq"] for e in conn.events("chat")] == list(range(1, 1201))


def room_with_chats(registry, count: int):
    """A client in room "r" that has said `count` things there."""
    a, conn_a = connect(registry)
    registry.join(a, "r")
    for i in range(count):
        chat(registry, a, "r", str(i))
    return a, conn_a


def test_join_replays_last_50_and_presence(registry):
    """A joiner gets the last 50 chat events; members already there get its presence."""
    a, conn_a = room_with_chats(registry, 60)
    b, conn_b = connect(registry)
    registry.join(b, "r")
    [joined] = conn_b.events("joined")
    assert [e["seq"] for e in joined["history"]] == list(range(11, 61))
    assert joined["members"] == [a.nick, b.nick]
    assert conn_a.events("presence")[-1] == {"type": "presence", "room": "r", "event": "join", "nick": b.nick}


def test_join_after_resumes_and_truncates(registry):
    """join with `after` replays everything newer, up to 1000, then says truncated."""
    room_with_chats(registry, 1005)
    b, conn_b = connect(registry)
    registry.join(b, "r", after=1000)
    assert [e["seq"] for e in conn_b.events("joined")[0]["history"]] == [1001, 1002, 1003, 1004, 1005]
    c, conn_c = connect(registry)
    registry.join(c, "r", after=0)
    joined = conn_c.events("joined")[0]
    assert joined["truncated"] is True and len(joined["history"]) == 1000 and joined["history"][0]["seq"] == 1


def test_seq_survives_empty_room(registry):
    """A room forgotten when empty continues its seq when used again."""
    a, _ = connect(registry)
    registry.join(a, "r")
    chat(registry, a, "r", "one")
    registry.leave(a, "r")
    assert registry.stats()["rooms"] == 0
    registry.join(a, "r")
    chat(registry, a, "r", "two")
    b, conn_b = connect(registry)
    registry.join(b, "r")
    assert [e["seq"] for e in conn_b.events("joined")[0]["history"]] == [1, 2]


def test_max_rooms(registry):
    """Joining more than max_rooms rooms is refused with too_many_rooms."""
    a, _ = connect(registry)
    for i in range(32):
        registry.join(a, f"r{i}")
    with pytest.raises(ChatError) as info:
        registry.join(a, "one-more")
    assert info.value.code == "too_many_rooms"
    registry.join(a, "r0")  # rejoining a room you are in is not a new room


def test_disconnect_sends_leave_to_each_room(registry):
    """A disconnect is a presence leave in every room the client was in, and frees its nick."""
    a, _ = connect(registry)
    b, conn_b = connect(registry)
    registry.set_nick(a, "alice")
    for room in ("r1", "r2"):
        registry.join(a, room)
        registry.join(b, room)
    registry.disconnect(a)
    leaves = [(e["room"], e["nick"]) for e in conn_b.events("presence") if e["event"] == "leave"]
    assert leaves == [("r1", "alice"), ("r2", "alice")]
    registry.disconnect(a)  # twice is harmless
    c, _ = connect(registry)
    registry.set_nick(c, "alice")


def test_not_in_room_errors(registry):
    """chat, leave and history need membership."""
    a, conn = connect(registry)
    for call in (lambda: registry.leave(a, "r"), lambda: registry.history(a, "r")):
        with pytest.raises(ChatError) as info:
            call()
        assert info.value.code == "not_in_room"
    chat(registry, a, "r", "x", reply_id=3)  # chats are answered in place, in order with the others
    assert conn.events()[-1] == {"type": "error", "code": "not_in_room", "message": "Join 'r' before sending to it.",
                                 "id": 3}


def test_dm_to_self_sends_one_copy(registry):
    """A dm to yourself arrives once, with the request id."""
    a, conn = connect(registry)
    registry.dm(a, a.nick.upper(), "note", reply_id=5)
    [dm] = conn.events("dm")
    assert dm["to"] == a.nick and dm["id"] == 5


def test_token_bucket():
    """The bucket allows a burst, then refills at its rate, and counts refusals in a row."""
    now = [0.0]
    bucket = TokenBucket(3, 2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.refused_in_a_row == 1
    now[0] += 0.5
    assert bucket.take() and not bucket.take()


@pytest.fixture
def manual():
    engine = ManualEngine()
    return engine, Registry(engine, Config().limits())


def kinds(conn) -> list:
    return [(e["type"], e.get("seq") or e.get("event")) for e in conn.events()[1:]]


def pair_in_room(registry):
    """Two clients in room "r"."""
    (a, conn_a), (b, conn_b) = connect(registry), connect(registry)
    registry.join(a, "r")
    registry.join(b, "r")
    return a, conn_a, b, conn_b


def in_thread(call) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_events_wait_for_the_engine_and_keep_order(manual):
    """Nobody sees a chat before the engine stored it; then all see it in seq order, the
    sender's own copy carrying its id."""
    engine, registry = manual
    a, conn_a, _b, conn_b = pair_in_room(registry)
    registry.chat_many(a, [ChatRequest("r", "one", 1), ChatRequest("r", "two")])
    assert conn_a.events("chat") == conn_b.events("chat") == []
    engine.commit()
    assert [(e["seq"], e.get("id")) for e in conn_a.events("chat")] == [(1, 1), (2, None)]
    assert [e["seq"] for e in conn_b.events("chat")] == [1, 2]


def test_next_request_waits_for_own_pending_chats(manual):
    """A pong never overtakes the acknowledgement of a chat sent before it: the request waits."""
    engine, registry = manual
    a, conn_a = connect(registry)
    registry.join(a, "r")
    chat(registry, a, "r", "one", reply_id=1)
    ping = in_thread(lambda: registry.reply(a, {"type": "pong", "id": 2}))
    ping.join(0.2)
    assert ping.is_alive() and conn_a.events("pong") == []
    engine.commit()
    ping.join(2)
    assert [(e["type"], e.get("id")) for e in conn_a.events()[-2:]] == [("chat", 1), ("pong", 2)]


def test_other_clients_never_wait_for_the_engine(manual):
    """While a's chat waits for its commit, b's ping, who, rooms, dm, nick, leave and join are
    answered at once."""
    _engine, registry = manual
    a, _conn_a, b, conn_b = pair_in_room(registry)
    chat(registry, a, "r", "pending")
    registry.reply(b, {"type": "pong"})
    registry.who(b, "r")
    registry.list_rooms(b)
    registry.dm(b, a.nick, "hi")
    registry.set_nick(b, "bob")
    registry.join(b, "elsewhere")
    registry.leave(b, "r")
    assert [e["type"] for e in conn_b.events()[2:]] == ["pong", "who", "rooms", "dm", "nick", "joined", "left"]


def test_join_while_a_chat_waits_gets_it_live_once(manual):
    """A join placed before a pending chat is delivered: `joined` holds what was delivered, and
    the pending chat follows live, once."""
    engine, registry = manual
    a, _ = connect(registry)
    registry.join(a, "r")
    chat(registry, a, "r", "first")
    engine.commit()
    chat(registry, a, "r", "second")
    c, conn_c = connect(registry)
    registry.join(c, "r")
    assert [e["seq"] for e in conn_c.events("joined")[0]["history"]] == [1]
    engine.commit()
    assert [e["seq"] for e in conn_c.events("chat")] == [2]


@pytest.mark.parametrize("after", [None, 0, 3])
def test_events_between_join_and_history_read_follow_joined(manual, after):
    """Chats delivered while a join reads its history are held and follow `joined`: joined plus
    what follows is the room's stream, no gap, no repeat."""
    engine, registry = manual
    a, _ = connect(registry)
    registry.join(a, "r")
    registry.chat_many(a, [ChatRequest("r", str(i)) for i in range(10)])
    engine.commit(6)
    c, conn_c = connect(registry)
    engine.on_read = engine.commit  # the other 4 are delivered during c's read
    registry.join(c, "r", after=after)
    [joined] = conn_c.events("joined")
    seen = [e["seq"] for e in joined["history"]] + [e["seq"] for e in conn_c.events("chat")]
    assert seen == list(range((after or 0) + 1, 11))
    assert conn_c.events()[1]["type"] == "joined"


def test_leave_is_not_held_by_a_pending_chat(manual):
    """Leaving is answered at once; the leaver does not get a chat delivered after it left, and
    the others see the leave before that chat."""
    engine, registry = manual
    a, conn_a, b, conn_b = pair_in_room(registry)
    chat(registry, a, "r", "bye")
    registry.leave(b, "r")
    assert kinds(conn_b)[-1] == ("left", None)
    engine.commit()
    assert ("chat", 1) not in kinds(conn_b)
    assert kinds(conn_a)[-2:] == [("presence", "leave"), ("chat", 1)]


def test_rejoin_answers_joined_without_presence(manual):
    """Joining a room you are in answers `joined` again, with history, and tells nobody."""
    engine, registry = manual
    a, _conn_a, b, conn_b = pair_in_room(registry)
    chat(registry, a, "r", "x")
    engine.commit()
    registry.join(b, "r", reply_id=7)
    joined = conn_b.events("joined")[-1]
    assert joined["id"] == 7 and [e["seq"] for e in joined["history"]] == [1]
    assert [e["event"] for e in _conn_a.events("presence")] == ["join"]


def test_chat_many_keeps_order_and_writes_once_per_member(registry):
    """Chats that arrived together: in order, a refused one answered in its place, and each
    member's frames written in a single send per run of chats."""
    a, conn_a = connect(registry)
    b, conn_b = connect(registry)
    registry.join(a, "r")
    registry.join(b, "r")
    conn_a.frames.clear()
    conn_b.frames.clear()
    items = [ChatRequest("r", "one", 1), ChatRequest(None, None, 2, refused=ChatError("too_long", "Too long.")),
             ChatRequest("nowhere", "x", 3), ChatRequest("r", "two", 4), ChatRequest("r", "three", 5)]
    registry.chat_many(a, items)
    assert [(e["type"], e.get("id")) for e in conn_a.events()] == [
        ("chat", 1), ("error", 2), ("error", 3), ("chat", 4), ("chat", 5)]
    assert [e["code"] for e in conn_a.events("error")] == ["too_long", "not_in_room"]
    assert [e["seq"] for e in conn_b.events()] == [1, 2, 3]
    assert len(conn_b.frames) == 2  # one write for [1], one for [2, 3]


def test_nick_change_after_leave_is_told_in_order(manual):
    """leave then nick: peers see the leave under the old nick, and no nick event."""
    _engine, registry = manual
    a, _, _, conn_b = pair_in_room(registry)
    old = a.nick
    registry.leave(a, "r")
    registry.set_nick(a, "alice")
    leaves = [e for e in conn_b.events("presence") if e["event"] == "leave"]
    assert leaves == [{"type": "presence", "room": "r", "event": "leave", "nick": old}]
    assert conn_b.events("nick") == []  # no longer sharing a room


def test_requests_of_a_disconnected_client_are_ignored(registry):
    """A client dropped from another thread cannot rejoin or rename as a ghost."""
    a, _ = connect(registry)
    b, conn_b = connect(registry)
    registry.join(b, "r")
    registry.disconnect(a)
    registry.join(a, "r")
    registry.set_nick(a, "ghost")
    chat(registry, a, "r", "boo")
    assert registry.stats() == {"connections": 1, "rooms": 1}
    assert [e["type"] for e in conn_b.events()[1:]] == ["joined"]


def test_truncated_resume_reads_the_engine_once(manual):
    """A resume with more than 1000 missed events answers from its one read, truncated."""
    engine, registry = manual
    a, _ = connect(registry)
    registry.join(a, "r")
    registry.chat_many(a, [ChatRequest("r", str(i)) for i in range(1200)])
    engine.commit()
    engine.reads = 0
    b, conn_b = connect(registry)
    registry.join(b, "r", after=0)
    joined = conn_b.events("joined")[0]
    assert joined["truncated"] and len(joined["history"]) == 1000 and engine.reads == 1


@pytest.mark.parametrize(("held", "presented", "takes_over"), [
    (None, None, True),  # anonymous by anonymous
    ("ann", "ANN", True),  # a token holder by a token for the same nick (folded)
    ("ann", None, False),  # a token holder by its resume token alone: stolen
    (None, "ann", False),  # an anonymous client by a token holder
    ("ann", "bob", False),  # another nick's token
])
def test_who_may_take_over_a_client_by_its_resume_token(held, presented, takes_over):
    """A resume token takes over a token holder only with a token for the same nick, an anonymous
    client only without one."""
    from types import SimpleNamespace

    from chatserver.rooms.registry import _same_holder

    identity = {nick: SimpleNamespace(nick=nick) for nick in ("ann", "ANN", "bob")}
    assert _same_holder(identity.get(held), identity.get(presented)) is takes_over
