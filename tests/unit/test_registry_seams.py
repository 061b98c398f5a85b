"""The registry at its seams with the engine: chats the engine gives up on, a kick landing
while a join reads its history, and history paging below what is stored but not yet delivered.
Fake connections and a hand-driven engine: no sockets."""

import pytest

from chatserver.config import Config
from chatserver.engines.base import Meta
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.registry import ChatRequest, Registry
from tests.helpers import FakeConn, ManualEngine


@pytest.fixture
def manual():
    engine = ManualEngine()
    return engine, Registry(engine, Config().limits())


def connect(registry):
    conn = FakeConn()
    return registry.connect(conn, TokenBucket(20, 5)), conn


def pair_in_room(registry):
    (a, conn_a), (b, conn_b) = connect(registry), connect(registry)
    registry.join(a, "r")
    registry.join(b, "r")
    return a, conn_a, b, conn_b


def test_rejected_chats_answer_unavailable_in_place(manual):
    """Chats the engine gives up on are answered `unavailable` with their ids; nobody else hears."""
    engine, registry = manual
    a, conn_a, _b, conn_b = pair_in_room(registry)
    registry.chat_many(a, [ChatRequest("r", "one", 1), ChatRequest("r", "two", 2)])
    batch, engine.uncommitted = engine.uncommitted, []
    registry.reject(batch, "history cannot be stored")
    assert [(e["code"], e["id"]) for e in conn_a.events("error")] == [("unavailable", 1), ("unavailable", 2)]
    assert conn_b.events("chat") == []
    registry.reply(a, {"type": "pong"})  # nothing pending any more: answered at once
    assert conn_a.events()[-1] == {"type": "pong"}


def test_a_kick_during_a_join_is_told_and_the_join_answered(manual):
    """A kick delivered while the kicked client's join reads its history: the client gets the kick
    event and its join is answered `forbidden`, not left without an answer."""
    engine, registry = manual
    a, _ = connect(registry)
    b, conn_b = connect(registry)
    registry.join(a, "r")
    kick = {"type": "kick", "room": "r", "nick": b.nick, "by": a.nick, "reason": ""}
    engine.on_read = lambda: engine.hub.deliver([("r", kick, Meta())])
    registry.join(b, "r", reply_id=5)
    events = conn_b.events()[1:]
    assert [e["type"] for e in events] == ["kick", "error"]
    assert events[1]["code"] == "forbidden" and events[1]["id"] == 5
    assert "r" not in b.rooms


def test_history_pages_below_what_is_not_delivered_yet(manual):
    """Stored events not yet delivered stay out of `history` without making the page short."""
    engine, registry = manual
    a, conn_a = connect(registry)
    b, _ = connect(registry)
    registry.join(a, "r")
    registry.join(b, "r")
    registry.chat_many(a, [ChatRequest("r", str(i)) for i in range(5)])
    engine.commit()
    registry.chat_many(b, [ChatRequest("r", "stored, not yet delivered")])
    engine.committed["r"].append(engine.uncommitted[0][1])  # stored; the hub has not seen it
    registry.history(a, "r", limit=2)
    assert [e["seq"] for e in conn_a.events("history")[-1]["messages"]] == [4, 5]
