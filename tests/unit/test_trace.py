"""The trace hooks on fake connections: silent and never called when off; the right words when on."""

import io
import json
import logging

import pytest

from chatserver.config import Config
from chatserver.engines.memory import MemoryEngine
from chatserver.ops import trace
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.dispatch import Context, Dispatcher
from chatserver.rooms.registry import Registry
from chatserver.wire import frames
from handlers import BATCH_HANDLERS, HANDLERS
from tests.helpers import FakeConn, frame

DISPATCHER = Dispatcher(HANDLERS, BATCH_HANDLERS)

STEPS = ("frame", "message", "handler", "refused", "room_event", "fanout", "reply", "bind")


def session(registry: Registry) -> FakeConn:
    """Two clients in one room; one reads a masked frame, sends a chat, a ping and an unknown type."""
    conns = [FakeConn(), FakeConn()]
    clients = [registry.connect(conn, TokenBucket(100, 100)) for conn in conns]
    contexts = [Context(registry, client, Config()) for client in clients]
    for context in contexts:
        DISPATCHER.dispatch(context, [json.dumps({"type": "join", "room": "lobby"})])
    raw = json.dumps({"type": "chat", "room": "lobby", "text": "hi"})
    reader = frames.FrameReader(io.BytesIO(frame(frames.OP_TEXT, raw.encode())).read, 65536)
    DISPATCHER.dispatch(contexts[0], [reader.next_event().text])
    DISPATCHER.dispatch(contexts[0], ['{"type":"ping"}', '{"type":"shout"}'])
    return conns[1]


def test_hooks_call_nothing_when_off(monkeypatch):
    """With the flag off (the default) no trace function runs, whatever the server does."""
    assert trace.ON is False

    def called(*args):
        raise AssertionError("a trace function ran while tracing was off")

    for step in STEPS:
        monkeypatch.setattr(trace, step, called)
    other = session(Registry(MemoryEngine(), Config().limits()))
    assert [e["text"] for e in other.events("chat")] == ["hi"]


@pytest.fixture
def traced(monkeypatch, caplog):
    """Tracing on for one test; yields the trace lines logged so far (a callable)."""
    monkeypatch.setattr(trace, "ON", True)
    caplog.set_level(logging.INFO, logger="roomchat.trace")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "roomchat.trace"]


def test_hooks_tell_each_step_when_on(traced):
    """On, the frame header, the JSON, the handler, the registry's decision, the fan-out and the
    replies each get their line."""
    session(Registry(MemoryEngine(), Config().limits()))
    lines = traced()
    chat = json.dumps({"type": "chat", "room": "lobby", "text": "hi"})
    at = lines.index(f"frame    ?: FIN=1 opcode=0x1 (text) MASK=1 payload {len(chat)} bytes")
    assert lines[at + 1] == f"json     ?: {chat}"
    assert lines[at + 2].startswith("handler  ?: chat -> handlers.chat.handle_many")
    assert lines[at + 3] == "registry lobby: seq 1 assigned to guest-1's chat; reaches 2 members"
    assert lines[at + 4].startswith("fan-out  2 members, 2 frames, ")
    assert "reply    guest-1: pong, 17 bytes" in lines
    assert "handler  ?: no handler for type 'shout'" in lines
    assert "reply    guest-1: error unknown_type, " in " ".join(lines)


def test_long_texts_are_cut(traced):
    """A message longer than TEXT_LIMIT is shown cut, with its length."""
    trace.message("x" * 1000)
    assert traced() == [f"json     ?: {'x' * trace.TEXT_LIMIT}... (1000 characters)"]
