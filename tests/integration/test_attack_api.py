"""Hostile and careless clients of the HTTP API over real sockets: bodies that are not what JSON
allows (lone surrogates, deep nesting), and what the server must still do afterwards."""

import json
import threading

import pytest

from chatserver.rooms import posts
from tests.helpers import FAST_LIMITS, SECRET, token, wait_for
from tests.integration.test_http_api import PATH, call


@pytest.fixture(params=["sqlite", "memory"])
def api_server(request, make_server, tmp_path):
    """A server taking tokens signed with SECRET, on each engine that runs in one process."""
    db = str(tmp_path / "history.db") if request.param == "sqlite" else ":memory:"
    return make_server(db=db, token_secret=SECRET, **FAST_LIMITS)


def test_a_lone_surrogate_is_bad_json_and_stores_nothing(api_server, connect):
    """A body whose text escapes a lone surrogate ("\\ud800", not UTF-8) is 400 bad_json, as on a
    WebSocket: nothing is stored or sent, and the room's history and later posts still work."""
    member = connect(api_server.url)
    member.join("lobby")
    bot = token("bot")
    for raw in (b'{"text":"\\ud800"}', b'{"text":"ok \\udfff"}', b'{"text":"hi","x":"\\ud83d"}'):
        status, _headers, body = call(api_server.port, "POST", raw=raw, bearer=bot)
        assert (status, body["error"]["code"]) == (400, "bad_json"), raw
    status, _headers, event = call(api_server.port, "POST", body={"text": "after \U0001F44D"}, bearer=bot)
    assert (status, event["seq"], event["text"]) == (201, 1, "after \U0001F44D")
    assert member.recv_type("chat") == event
    assert connect(api_server.url).join("lobby")["history"] == [event]


def test_deeply_nested_json_and_nan_are_bad_json(api_server):
    """A body nested deeper than 1024 (up to max_message_bytes of "[") or with NaN gets 400
    bad_json, an answer rather than a dropped connection."""
    bot = token("bot")
    for raw in (b"[" * 60_000, b'{"text":' * 5000, b'{"text":"hi","n":NaN}', b'{"text":"hi"} trailing'):
        status, _headers, body = call(api_server.port, "POST", raw=raw, bearer=bot)
        assert (status, body["error"]["code"]) == (400, "bad_json"), raw[:20]
    assert call(api_server.port, "POST", body={"text": "still here"}, bearer=bot)[0] == 201


def test_extra_fields_and_repeated_keys_are_harmless(api_server):
    """Fields other than text are ignored; a repeated "text" counts once (the last, as JSON parsers do)."""
    bot = token("bot")
    raw = json.dumps({"text": "a", "type": "dm", "room": "other", "from": "admin", "seq": 99}).encode()
    status, _headers, event = call(api_server.port, "POST", raw=raw, bearer=bot)
    assert (status, event["from"], event["room"], event["seq"], event["text"]) == (201, "bot", "lobby", 1, "a")
    status, _headers, event = call(api_server.port, "POST", raw=b'{"text":"a","text":"b"}', bearer=bot)
    assert (status, event["text"]) == (201, "b")
    status, _headers, body = call(api_server.port, "GET", PATH, bearer=bot)
    assert [m["text"] for m in body["messages"]] == ["a", "b"]


def test_a_bug_behind_an_api_request_is_answered_500(make_server, monkeypatch):
    """Whatever escapes the API (a bug) is logged and answered 500 with no details, not a silent
    close; the server keeps serving."""
    server = make_server(token_secret=SECRET, **FAST_LIMITS)
    respond = server.api.respond

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.api, "respond", broken)
    status, headers, body = call(server.port, "POST", body={"text": "hi"}, bearer=token("bot"))
    assert (status, headers["content-type"], body) == (500, "text/plain; charset=utf-8", b"internal error\n")
    monkeypatch.setattr(server.api, "respond", respond)
    assert call(server.port, "POST", body={"text": "hi"}, bearer=token("bot"))[0] == 201


def squatted(squatter, port: int):
    """`squatter` (a Peer without a token) takes the nick ann and joins lobby; then a post with
    ann's token on `port` renames it: (squatter, the posted chat)."""
    squatter.set_nick("ann")
    squatter.join("lobby")
    status, _headers, event = call(port, "POST", body={"text": "the real ann"}, bearer=token("ann"))
    assert status == 201
    renamed = squatter.recv_type("nick")
    assert (renamed["old"], renamed["nick"] != "ann") == ("ann", True)
    return squatter, event


def test_a_post_takes_the_nick_from_a_guest_who_has_it(api_server, connect):
    """A post with ann's token while a connection without a token is called ann: that connection
    is renamed to a guest nick (as when ann connects), so it cannot edit or delete ann's chats."""
    squatter, event = squatted(connect(api_server.url), api_server.port)
    assert squatter.recv_type("chat") == event
    assert squatter.request(type="edit", room="lobby", seq=event["seq"], text="not yours")["code"] == "forbidden"
    assert squatter.request(type="delete", room="lobby", seq=event["seq"])["code"] == "forbidden"
    assert squatter.request(type="nick", nick="ann")["code"] == "nick_reserved"


def test_a_post_leaves_a_connection_of_the_same_token_alone(api_server, peers):
    """A bot posting with ann's token while ann is connected with it: ann's connection is not
    replaced nor renamed, and gets the chat like any member."""
    ann = peers(f"{api_server.url}?token={token('ann')}")
    ann.join("lobby")
    status, _headers, event = call(api_server.port, "POST", body={"text": "from my script"}, bearer=token("ann"))
    assert status == 201
    assert ann.recv_type("chat") == event
    assert ann.request(type="ping") == {"type": "pong"}
    assert ann.request(type="edit", room="lobby", seq=event["seq"], text="mine")["type"] == "edit"


def test_on_redis_a_post_takes_the_nick_from_a_guest_on_another_process(redis_server, cluster, peers):
    """Two processes: a post on A with ann's token renames the tokenless "ann" connected to B."""
    first, second = cluster(2, "--token-secret", SECRET)
    squatter, event = squatted(peers(second.url), first.port)
    wait_for(lambda: squatter.request(type="edit", room="lobby", seq=event["seq"], text="x").get("code")
             == "forbidden", timeout=10)


def test_on_redis_a_post_racing_the_last_one_out_of_a_room_is_confirmed(redis_server, make_server, monkeypatch):
    """Redis: a post to a room nobody is in while the previous post to it unsubscribes (it found
    the room unwanted, and has not yet let go of the channel): the new post still hears its chat
    come back and gets 201, not 503 after the wait."""
    server = make_server(redis=redis_server.url, token_secret=SECRET, **FAST_LIMITS)
    engine, registry = server.engine, server.registry
    monkeypatch.setattr(posts.Waiter.wait, "__defaults__", (8.0,))  # a lost chat shows in 8 s, not 30
    has_room, subscribe, unsubscribe = registry.has_room, engine.subscribe, engine.unsubscribe
    paused, subscribed, unsubscribed = threading.Event(), threading.Event(), threading.Event()

    def slow_has_room(name):
        found = has_room(name)
        if not found and engine._sub_lock.locked() and not paused.is_set():  # the first post's unsubscribe
            paused.set()
            subscribed.wait(5)  # until the second post is subscribed, or would be
        return found

    def watched_subscribe(room):
        subscribe(room)
        if paused.is_set():  # the second post: it publishes once the first has let go
            subscribed.set()
            unsubscribed.wait(10)

    def watched_unsubscribe(room):
        unsubscribe(room)
        if paused.is_set():
            unsubscribed.set()

    monkeypatch.setattr(registry, "has_room", slow_has_room)
    monkeypatch.setattr(engine, "subscribe", watched_subscribe)
    monkeypatch.setattr(engine, "unsubscribe", watched_unsubscribe)
    answers = []
    first = threading.Thread(target=lambda: answers.append(
        call(server.port, "POST", "/api/rooms/quiet/messages", {"text": "one"}, bearer=token("bot"))[0]))
    first.start()
    assert paused.wait(10)
    status, _headers, event = call(server.port, "POST", "/api/rooms/quiet/messages", {"text": "two"},
                                   bearer=token("bot"))
    first.join(10)
    assert (answers, status, event.get("seq")) == ([201], 201, 2)
