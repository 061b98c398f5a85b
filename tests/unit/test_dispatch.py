"""Dispatch and handlers with a real Registry on fake connections: bad fields -> the right code."""

import json

import pytest

from chatclient.schema import validator
from chatserver.config import Config
from chatserver.engines.memory import MemoryEngine
from chatserver.errors import CloseConnection
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.dispatch import Context, Dispatcher
from chatserver.rooms.registry import Registry
from handlers import BATCH_HANDLERS, HANDLERS
from tests.helpers import FakeConn

DISPATCHER = Dispatcher(HANDLERS, BATCH_HANDLERS)


@pytest.fixture
def ctx():
    config = Config()
    registry = Registry(MemoryEngine(), config.limits())
    conn = FakeConn()
    client = registry.connect(conn, TokenBucket(1000, 1000))
    conn.frames.clear()
    return Context(registry, client, config)


def reply(ctx, raw) -> dict:
    ctx.client.conn.frames.clear()
    DISPATCHER.dispatch(ctx, [raw if isinstance(raw, str) else json.dumps(raw)])
    return ctx.client.conn.events()[-1]


def test_every_type_has_a_handler():
    """The dispatch table covers every request type of protocol v1."""
    assert set(HANDLERS) == set(validator("requests").schema["properties"]["type"]["enum"])


@pytest.mark.parametrize(
    "raw, code",
    [
        ("{not json", "bad_json"),
        ("[" * 100000, "bad_json"),
        ("[1, 2]", "bad_message"),
        ({"room": "r"}, "bad_message"),
        ({"type": 5}, "bad_message"),
        ({"type": "ping", "id": True}, "bad_message"),
        ({"type": "ping", "id": "x" * 65}, "bad_message"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "nick", "nick": "no spaces"}, "bad_nick"),
        ({"type": "nick", "nick": "x" * 33}, "bad_nick"),
        ({"type": "nick"}, "bad_message"),
        ({"type": "join", "room": "a/b"}, "bad_room"),
        ({"type": "join", "room": ""}, "bad_room"),
        ({"type": "join", "room": "r", "after": -1}, "bad_message"),
        ({"type": "join", "room": "r", "after": 2**63}, "bad_message"),
        ({"type": "chat", "room": "r", "text": "hi"}, "not_in_room"),
        ({"type": "chat", "room": "r", "text": ""}, "bad_message"),
        ({"type": "chat", "room": "r", "text": "x" * 2001}, "too_long"),
        ({"type": "chat", "room": "r", "text": 5}, "bad_message"),
        ({"type": "dm", "to": "nobody", "text": "hi"}, "no_such_user"),
        ({"type": "leave", "room": "r"}, "not_in_room"),
        ({"type": "history", "room": "r", "limit": 201}, "bad_message"),
        ({"type": "history", "room": "r"}, "not_in_room"),
        ('{"type":"chat","room":"r","text":"\\ud800"}', "bad_json"),
        ('{"type":"ping","x":NaN}', "bad_json"),
    ],
)
def test_bad_requests_get_error_codes(ctx, raw, code):
    """Each kind of bad request gets an `error` with its code and a sentence; nothing else happens."""
    event = reply(ctx, raw)
    assert event["type"] == "error" and event["code"] == code, event
    assert event["message"].endswith(".")


def test_error_echoes_id(ctx):
    """An error reply carries the request's id."""
    assert reply(ctx, {"type": "dance", "id": "abc"})["id"] == "abc"


def test_ping_pong(ctx):
    """ping gets pong with the id."""
    assert reply(ctx, {"type": "ping", "id": 3}) == {"type": "pong", "id": 3}


def test_rate_limit_then_flood_close():
    """Over the burst: rate_limited errors; 3x the burst refused in a row: CloseConnection 1008."""
    config = Config(rate_burst=2, rate_per_second=0.001)
    registry = Registry(MemoryEngine(), config.limits())
    conn = FakeConn()
    ctx = Context(registry, registry.connect(conn, TokenBucket(2, 0.001)), config)
    for _ in range(2):
        DISPATCHER.dispatch(ctx, ['{"type":"ping"}'])
    for _ in range(6):
        DISPATCHER.dispatch(ctx, ['{"type":"ping"}'])
    assert [e["type"] for e in conn.events()][-6:] == ["error"] * 6
    assert conn.events()[-1]["code"] == "rate_limited"
    with pytest.raises(CloseConnection) as info:
        DISPATCHER.dispatch(ctx, ['{"type":"ping"}'])
    assert info.value.close_code == 1008
