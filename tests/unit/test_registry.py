"""Registry rules with fake connections whose outboxes are lists: no sockets."""

import threading

import pytest

from chatserver.client import TokenBucket
from chatserver.config import Config
from chatserver.errors import ChatError
from chatserver.registry import Registry
from chatserver.store import MemoryStore
from tests.helpers import FakeConn


@pytest.fixture
def registry():
    return Registry(MemoryStore(), Config().limits())


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
        registry.chat(clients[i % 3][0], "r", f"m{i}")
    seqs = [[e["seq"] for e in conn.events("chat")] for _, conn in clients]
    assert seqs == [[1, 2, 3, 4, 5]] * 3


def test_concurrent_chats_keep_one_order(registry):
    """Four threads chatting at once: every member's seq list is identical and gapless."""
    clients = [connect(registry) for _ in range(4)]
    for client, _ in clients:
        registry.join(client, "r")

    def spam(client):
        for i in range(300):
            registry.chat(client, "r", str(i))

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
        registry.chat(a, "r", str(i))
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
    registry.chat(a, "r", "one")
    registry.leave(a, "r")
    assert registry.stats()["rooms"] == 0
    registry.join(a, "r")
    registry.chat(a, "r", "two")
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
    a, _ = connect(registry)
    for call in (lambda: registry.chat(a, "r", "x"), lambda: registry.leave(a, "r"), lambda: registry.history(a, "r")):
        with pytest.raises(ChatError) as info:
            call()
        assert info.value.code == "not_in_room"


def test_dm_to_self_sends_one_copy(registry):
    """A dm to yourself arrives once, with the request id."""
    a, conn = connect(registry)
    registry.dm(a, a.nick.upper(), "note", reply_id=5)
    [dm] = conn.events("dm")
    assert dm["to"] == a.nick and dm["id"] == 5


class SlowStore(MemoryStore):
    """A store that commits only when told to, like a background SQLite writer."""

    def __init__(self):
        super().__init__()
        self.uncommitted = []

    def append(self, event):
        super().append(event)
        self.uncommitted.append(event)
        return False

    def commit(self):
        batch, self.uncommitted = self.uncommitted, []
        self.on_durable(batch)


def test_events_wait_for_the_store_and_keep_order():
    """With a background store nobody sees an event before it is committed, and order holds."""
    store = SlowStore()
    registry = Registry(store, Config().limits())
    a, conn_a = connect(registry)
    registry.join(a, "r")
    registry.chat(a, "r", "one", reply_id=1)
    registry.chat(a, "r", "two")
    assert conn_a.events("chat") == []
    store.commit()
    chats = conn_a.events("chat")
    assert [e["seq"] for e in chats] == [1, 2] and chats[0]["id"] == 1


def test_token_bucket():
    """The bucket allows a burst, then refills at its rate, and counts refusals in a row."""
    now = [0.0]
    bucket = TokenBucket(3, 2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.refused_in_a_row == 1
    now[0] += 0.5
    assert bucket.take() and not bucket.take()


@pytest.fixture
def slow():
    store = SlowStore()
    return store, Registry(store, Config().limits())


def kinds(conn) -> list:
    return [(e["type"], e.get("seq") or e.get("event")) for e in conn.events()[1:]]


def pair_in_room(registry):
    """Two clients in room "r"."""
    (a, conn_a), (b, conn_b) = connect(registry), connect(registry)
    registry.join(a, "r")
    registry.join(b, "r")
    return a, conn_a, b, conn_b


def test_leave_after_pending_chat_keeps_decision_order(slow):
    """A chat waiting for its commit still reaches a member who left after it was sent, before
    `left`; the others see the chat before the presence leave."""
    store, registry = slow
    a, conn_a, b, conn_b = pair_in_room(registry)
    registry.chat(a, "r", "bye")
    registry.leave(b, "r")
    assert ("left", None) not in kinds(conn_b)
    store.commit()
    assert kinds(conn_b)[-2:] == [("chat", 1), ("left", None)]
    assert kinds(conn_a)[-2:] == [("chat", 1), ("presence", "leave")]


def test_reply_waits_behind_own_pending_chat(slow):
    """A pong (or any reply) never overtakes the echo of a chat sent before it."""
    store, registry = slow
    a, conn_a = connect(registry)
    registry.join(a, "r")
    registry.chat(a, "r", "one", reply_id=1)
    registry.reply(a, {"type": "pong"})
    registry.who(a, "r")
    store.commit()
    assert [e["type"] for e in conn_a.events()[-3:]] == ["chat", "pong", "who"]


def test_join_during_pending_chat_replays_it_in_joined(slow):
    """A join decided after a chat that still waits for its commit: `joined` comes after the
    commit and its history holds that chat; nothing is sent twice."""
    store, registry = slow
    a, _ = connect(registry)
    registry.join(a, "r")
    registry.chat(a, "r", "first")
    store.commit()
    registry.chat(a, "r", "second")
    c, conn_c = connect(registry)
    registry.join(c, "r")
    assert conn_c.events("joined") == []
    store.commit()
    events = conn_c.events()[1:]
    assert [e["type"] for e in events] == ["joined"]
    assert [e["seq"] for e in events[0]["history"]] == [1, 2]


def test_rejoin_and_nick_stay_in_request_order(slow):
    """chat, join (again), nick, ping from one client while a commit is pending: replies come in
    request order, and a peer's `joined` lists the new nick before any nick event."""
    store, registry = slow
    a, conn_a = connect(registry)
    registry.join(a, "r")
    registry.chat(a, "r", "x", reply_id=1)
    registry.join(a, "r", reply_id=2)
    registry.set_nick(a, "alice", reply_id=3)
    registry.reply(a, {"type": "pong", "id": 4})
    store.commit()
    assert [(e["type"], e.get("id")) for e in conn_a.events()[-4:]] == [
        ("chat", 1), ("joined", 2), ("nick", 3), ("pong", 4)]


def test_chat_many_keeps_order_and_writes_once_per_member(registry):
    """Chats that arrived together: in order, a refused one answered in its place, and each
    member's frames written in a single send."""
    a, conn_a = connect(registry)
    b, conn_b = connect(registry)
    registry.join(a, "r")
    registry.join(b, "r")
    conn_a.frames.clear()
    conn_b.frames.clear()
    items = [("r", "one", 1), (ChatError("too_long", "Too long."), None, 2), ("nowhere", "x", 3), ("r", "two", 4)]
    registry.chat_many(a, items)
    assert [(e["type"], e.get("id")) for e in conn_a.events()] == [("chat", 1), ("error", 2), ("error", 3), ("chat", 4)]
    assert [e["code"] for e in conn_a.events("error")] == ["too_long", "not_in_room"]
    assert [e["seq"] for e in conn_b.events()] == [1, 2]
    assert len(conn_a.frames) == len(conn_b.frames) == 1


class BusyStore(MemoryStore):
    """A store where, right after join's read and before the join is decided, chats happen."""

    burst = None
    reads = 0

    def read(self, *args, **kwargs):
        self.reads += 1
        result = super().read(*args, **kwargs)
        if self.burst:
            burst, self.burst = self.burst, None
            burst()
        return result


@pytest.mark.parametrize("before, during, after, expect, reads", [
    (5, 50, None, range(6, 56), 1),  # the room's tail fills in what came after the read
    (0, 300, None, range(251, 301), 1),  # the newest 50 are all in the tail
    (20, 300, 10, range(11, 321), 2),  # a resume across such a burst
])
def test_join_history_whole_whatever_happens_between_read_and_join(before, during, after, expect, reads):
    """Events delivered between join's store read and its decision are replayed once, no gap."""
    store = BusyStore()
    registry = Registry(store, Config().limits())
    a, _ = connect(registry)
    registry.join(a, "r")
    for i in range(before):
        registry.chat(a, "r", str(i))
    store.burst = lambda: [registry.chat(a, "r", str(i)) for i in range(during)]
    store.reads = 0
    b, conn_b = connect(registry)
    registry.join(b, "r", after=after)
    assert [e["seq"] for e in conn_b.events("joined")[0]["history"]] == list(expect)
    assert store.reads == reads


def test_nick_change_after_leave_is_told_in_order(slow):
    """leave then nick while a commit is pending: peers see the leave under the old nick."""
    store, registry = slow
    a, _, _, conn_b = pair_in_room(registry)
    registry.chat(a, "r", "x")
    old = a.nick
    registry.leave(a, "r")
    registry.set_nick(a, "alice")
    store.commit()
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
    registry.chat(a, "r", "boo")
    assert registry.stats() == {"connections": 1, "rooms": 1}
    assert [e["type"] for e in conn_b.events()[1:]] == ["joined"]


def test_failing_effect_does_not_stop_delivery(slow, caplog):
    """An effect that raises on the store's thread is logged; later events still go out."""
    store, registry = slow
    a, conn_a = connect(registry)
    registry.join(a, "r")
    registry.chat(a, "r", "one")
    with registry._lock:
        registry._later(lambda: 1 / 0)
    registry.chat(a, "r", "two")
    store.commit()
    assert [e["seq"] for e in conn_a.events("chat")] == [1, 2]
    assert "effect failed" in caplog.text


def test_truncated_resume_reads_the_store_once():
    """A resume with more than 1000 missed events answers from its one read, truncated."""
    store = BusyStore()
    registry = Registry(store, Config().limits())
    room_with_chats(registry, 1200)
    store.reads = 0
    b, conn_b = connect(registry)
    registry.join(b, "r", after=0)
    joined = conn_b.events("joined")[0]
    assert joined["truncated"] and len(joined["history"]) == 1000 and store.reads == 1


def test_chats_refused_while_the_store_is_stuck(slow, monkeypatch):
    """When commits stall and the backlog is full, chats get rate_limited instead of piling up."""
    store, registry = slow
    monkeypatch.setattr("chatserver.registry.MAX_BACKLOG", 3)
    a, conn_a = connect(registry)
    registry.join(a, "r")
    for i in range(3):
        registry.chat(a, "r", str(i))
    with pytest.raises(ChatError) as info:
        registry.chat(a, "r", "one too many")
    assert info.value.code == "rate_limited"
    store.commit()
    registry.chat(a, "r", "fine again")
    store.commit()
    assert [e["seq"] for e in conn_a.events("chat")] == [1, 2, 3, 4]
