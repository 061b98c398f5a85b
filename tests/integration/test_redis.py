"""Several roomchat processes on one Redis behave as one server: real redis-server, real processes."""

import re
import subprocess
import sys
import threading
import time

import pytest
import redis
import websocket

from chatserver import protocol
from chatserver.engines.base import Meta
from chatserver.engines.redis import RECEIVE_BATCH, RedisEngine
from chatserver.engines.redis_scripts import room_key
from tests.helpers import ROOT, Peer, RoomsHub, run_to_exit, wait_for

pytestmark = pytest.mark.timeout(60)


def stream(peer: Peer, room: str, until) -> list:
    """Everything `peer` receives for `room` (chats as seqs, presence and nick as tuples) until
    `until(events)` is true."""
    seen = []
    while not until(seen):
        event = peer.recv()
        if event.get("room", room) == room and event["type"] in ("chat", "presence", "nick"):
            seen.append(event["seq"] if event["type"] == "chat" else (event["type"], event.get("nick")))
    return seen


def test_concurrent_senders_on_three_processes_see_one_stream(cluster, peers):
    """4 senders and 3 receivers spread over 3 processes: every receiver sees the same sequence of
    chats and presence, with gapless seqs."""
    servers = cluster(3)
    receivers = [peers(s.url) for s in servers]
    for receiver in receivers:
        receiver.join("lobby")
    senders = [peers(servers[i % 3].url) for i in range(4)]
    for sender in senders:
        sender.join("lobby")
    per_sender = 50

    def send_all(sender):
        for i in range(per_sender):
            sender.send(type="chat", room="lobby", text=f"{sender.nick} {i}")

    threads = [threading.Thread(target=send_all, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    leaver = peers(servers[1].url)
    leaver.join("lobby")
    leaver.close()
    for thread in threads:
        thread.join()
    total = 4 * per_sender
    views = [stream(r, "lobby", lambda seen: sum(isinstance(x, int) for x in seen) >= total) for r in receivers]
    chats = [[x for x in view if isinstance(x, int)] for view in views]
    assert chats[0] == list(range(1, total + 1))
    assert chats[0] == chats[1] == chats[2]
    tails = [view[view.index(("presence", senders[-1].nick)) + 1 :] for view in views]  # after all joined
    assert tails[0] == tails[1] == tails[2]  # the leaver's join and leave sit at the same place for all


def test_nicks_are_unique_across_processes(cluster, peers):
    """A nick taken on one process is taken on the others, in any case; freed when its owner leaves."""
    a, b = cluster(2)
    ann = peers(a.url)
    ann.set_nick("ann")
    other = peers(b.url)
    assert other.request(type="nick", nick="ANN")["code"] == "nick_taken"
    ann.close()
    wait_for(lambda: other.request(type="nick", nick="ann")["type"] == "nick", timeout=5)


def test_dm_who_and_rooms_across_processes(cluster, peers):
    """A DM reaches the nick on whichever process; who and rooms count every process's members."""
    a, b = cluster(2)
    ann, bob = peers(a.url), peers(b.url)
    ann.set_nick("ann")
    bob.set_nick("bob")
    ann.join("lobby")
    bob.join("lobby")
    bob.join("side")
    dm = bob.request(type="dm", to="ANN", text="psst", id=3)
    assert dm == {**ann.recv_type("dm"), "id": 3} and dm["to"] == "ann"
    assert bob.request(type="dm", to="nobody", text="x")["code"] == "no_such_user"
    ann.send(type="who", room="lobby")  # a DM and room events are not ordered: bob's join may still be on its way
    assert ann.recv_type("who")["members"] == ["ann", "bob"]
    ann.send(type="rooms")
    assert ann.recv_type("rooms")["rooms"] == [{"room": "lobby", "members": 2}, {"room": "side", "members": 1}]


def test_history_and_resume_across_a_process_restart(redis_server, cluster, peers, spawn):
    """History lives in Redis: after the process restarts, join and join-after replay it."""
    [a] = cluster(1)
    peer = peers(a.url)
    peer.join("r")
    assert [e["seq"] for e in peer.chat_all("r", [f"m{i}" for i in range(5)])] == [1, 2, 3, 4, 5]
    peer.close()
    epoch = peer.welcome["epoch"]
    assert a.stop() == 0, a.stderr_text()[-3000:]
    again = peers(spawn("--redis", redis_server.url).url)
    assert again.welcome["epoch"] == epoch
    assert [e["seq"] for e in again.join("r", after=2)["history"]] == [3, 4, 5]
    assert again.chat_all("r", ["next"])[0]["seq"] == 6


def test_redis_restart_answers_unavailable_then_recovers(redis_server, cluster, peers):
    """Redis stopped mid-run: connections stay open and chat answers `unavailable`; once Redis is
    back, chats flow again and every receiver has each acknowledged chat once, in order."""
    a, b = cluster(2)
    sender, receiver = peers(a.url), peers(b.url)
    sender.join("r")
    receiver.join("r")
    acked = [e["seq"] for e in sender.chat_all("r", ["one", "two"])]
    redis_server.stop()
    reply = sender.request(type="chat", room="r", text="lost", id=9)
    assert reply["type"] == "error" and reply["code"] == "unavailable" and reply["id"] == 9
    assert sender.request(type="ping") == {"type": "pong"}  # the connection stays usable
    redis_server.start()

    def chat_goes_through():
        reply = sender.request(type="chat", room="r", text="back")
        return reply if reply["type"] == "chat" else None

    acked.append(wait_for(chat_goes_through, timeout=15, interval=0.2)["seq"])
    got = []
    while len(got) < 3:
        event = receiver.recv()
        if event["type"] == "chat":
            got.append(event["seq"])
    assert got == acked == [1, 2, 3]


def test_leaving_two_rooms_while_redis_is_down_wedges_nothing(redis_server, cluster, peers):
    """A client in two rooms disconnects while Redis is down: its first leave waits for Redis and
    the second queues behind it (it once deadlocked on the engine's own lock there), and the
    process logs the disconnect, which comes after both, before Redis is started again. Once Redis is
    back, the other process hears both leaves, a newcomer on the leaver's process can join and
    chat, and that process stops cleanly."""
    a, b = cluster(2, "--log-level", "INFO")  # its disconnect line: logged once the leaves are queued
    leaver, watcher = peers(a.url), peers(b.url)
    for room in ("r1", "r2"):
        leaver.join(room)
        watcher.join(room)
    redis_server.stop()
    leaver.close()
    wait_for(lambda: f" {leaver.nick}: client closed" in a.stderr_text(), timeout=30)  # tried (and deferred)
    redis_server.start()
    left = set()
    while left != {"r1", "r2"}:
        event = watcher.recv()
        if event["type"] == "presence" and event["event"] == "leave" and event["nick"] == leaver.nick:
            left.add(event["room"])
    newcomer = peers(a.url)

    def joined():
        newcomer.send(type="join", room="r1")
        reply = newcomer.recv()
        while reply["type"] not in ("joined", "error"):
            reply = newcomer.recv()
        return reply if reply["type"] == "joined" else None

    wait_for(joined, timeout=15, interval=0.2)
    assert newcomer.chat_all("r1", ["still here"])[0]["text"] == "still here"
    assert a.stop() == 0


def test_killed_process_members_leave_after_its_lease(cluster, peers):
    """kill -9 of one process: the others go on, and once its lease (1 s here) and the grace after it
    have passed, its members leave everyone's presence once."""
    a, b, c = cluster(3, "--redis-lease", "1")
    doomed = peers(a.url)
    doomed.set_nick("doomed")
    doomed.join("r")
    watchers = [peers(b.url), peers(c.url)]
    for watcher in watchers:
        watcher.join("r")
    a.proc.kill()
    a.proc.wait()
    started = time.monotonic()
    for watcher in watchers:
        watcher.ws.settimeout(15)
        event = watcher.recv_type("presence")
        while event["event"] == "join":
            event = watcher.recv_type("presence")
        assert event == {"type": "presence", "room": "r", "event": "leave", "nick": "doomed"}
    assert time.monotonic() - started >= 1  # not before its lease ran out
    assert watchers[0].request(type="who", room="r")["members"] == [w.nick for w in watchers]
    # its nick is free again: the reaper deletes its claims right after it announced the leaves
    wait_for(lambda: watchers[0].request(type="nick", nick="doomed")["type"] == "nick", timeout=15)
    watchers[1].ws.settimeout(1)
    with pytest.raises(websocket.WebSocketTimeoutException):  # one leave only, not one per survivor
        while True:
            event = watchers[1].recv()
            assert event.get("event") != "leave", event


def test_unreachable_redis_at_start_exits_2_with_one_line():
    """roomchat with a Redis nobody answers at: one line, status 2."""
    done = run_to_exit("--redis", "redis://127.0.0.1:1/0")
    assert done.returncode == 2
    assert done.stderr.startswith("roomchat: cannot reach Redis at redis://127.0.0.1:1/0")
    assert done.stderr.count("\n") == 1


def test_db_and_redis_are_mutually_exclusive():
    """--db and --redis together are refused with a usage error."""
    done = run_to_exit("--redis", "redis://127.0.0.1:1/0", "--db", "x.db")
    assert done.returncode == 2 and "mutually exclusive" in done.stderr


def test_docs_several_processes_commands_work(redis_server, spawn, peers):
    """docs/cluster.md's two commands (with this test's Redis and free ports) make one server."""
    section = (ROOT / "docs" / "cluster.md").read_text().split("\n## ", 1)[0]
    commands = re.findall(r"^\.venv/bin/python roomchat\.py (--redis \S+ --port \d+)", section, re.M)
    assert len(commands) == 2, commands
    servers = []
    for command in commands:
        args = command.split()
        args[1] = redis_server.url
        args[3] = "0"
        servers.append(spawn(*args))
    ann, bob = peers(servers[0].url), peers(servers[1].url)
    ann.join("lobby")
    bob.join("lobby")
    ann.send(type="chat", room="lobby", text="across")
    assert bob.recv_type("chat")["text"] == "across"


def test_concurrent_first_joins_on_one_process_are_placed_at_once(cluster, peers):
    """Many clients of one process join a room nobody was in, all at once: each join waits for
    the process's subscription, so every `joined` comes promptly and all agree on the members."""
    [server, other] = cluster(2)
    clients = [peers(server.url) for _ in range(8)]
    started = time.monotonic()
    for client in clients:
        client.send(type="join", room="fresh")
    joined = [client.recv_type("joined") for client in clients]
    assert time.monotonic() - started < 8  # not after the join timeout (10 s)
    watcher = peers(other.url)
    assert sorted(watcher.join("fresh")["members"]) == sorted([c.nick for c in clients] + [watcher.nick])
    assert all(c.nick in j["members"] for c, j in zip(clients, joined, strict=True))


def test_a_burst_of_connects_and_joins_is_answered_at_once(cluster, peers):
    """150 clients connecting and joining 10 new rooms at the same moment on one process all get
    `welcome` and `joined` within seconds and no error: threads wait for a free connection of the
    pool, and a join is announced only once its room's subscription is in place, so it comes back
    at once instead of after the join timeout (10 s)."""
    (server,) = cluster(1, "--max-connections-per-address", "0")  # all 150 come from 127.0.0.1
    clients = 150
    start = threading.Barrier(clients)
    results = [None] * clients

    def connect_and_join(i):
        start.wait()
        began = time.monotonic()
        try:
            reply = peers(server.url, timeout=15).join(f"burst{i % 10}")
            results[i] = (reply["type"], time.monotonic() - began)
        except Exception as exc:  # reported by the assertion below
            results[i] = (repr(exc), None)

    threads = [threading.Thread(target=connect_and_join, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [r for r in results if r[0] != "joined"]
    assert not failed, failed[:3]
    assert max(seconds for _kind, seconds in results) < 9  # not after the join timeout (10 s)


class RetakeHub(RoomsHub):
    """Plays the Registry of one process that has no clients: counts the retakes the engine asks
    for; the first one stays inside `retake` until `go` is set."""

    def __init__(self):
        super().__init__()
        self.retakes, self.inside, self.go = 0, threading.Event(), threading.Event()

    def retake(self):
        self.retakes += 1
        if self.retakes == 1:
            self.inside.set()
            assert self.go.wait(30)


def test_a_redis_restart_noticed_during_a_retake_brings_another_retake(redis_server):
    """Redis restarts (its data kept) and the engine's heartbeat has the registry take its clients
    back; Redis restarts again while that retake is still going on (its writes may be lost with
    that run): once the first retake ends, the registry is asked to take them back again."""
    engine, hub = RedisEngine(redis_server.url), RetakeHub()
    engine.start(hub)
    try:
        with redis.Redis.from_url(redis_server.url) as store:

            def noticed() -> bool:  # the listener has seen this run of Redis (engines/redis.py _check_restart)
                return engine._runs == {"": store.info("server")["run_id"]}

            wait_for(noticed, timeout=10)
            redis_server.stop()
            redis_server.start()
            assert hub.inside.wait(30), "no retake after the first restart"
            redis_server.stop()
            redis_server.start()
            wait_for(noticed, timeout=30, interval=0.05)
        hub.go.set()
        wait_for(lambda: hub.retakes == 2, timeout=15, interval=0.05)
    finally:
        hub.go.set()
        engine.close()


def test_a_process_whose_leaving_fails_half_way_is_reaped_as_a_dead_one(redis_server):
    """Process A, closing, announces its members gone as a reaper would, and Redis refuses one of
    those leaves (an error reply: the room's log is no stream here): A leaves its lease to run
    out, and once it has, process B reaps A, so ann, A's member, leaves that room all the same
    instead of staying in it for ever."""
    hub_a, hub_b = RoomsHub(), RoomsHub()
    hub_a.process_id, hub_b.process_id = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
    a, b = RedisEngine(redis_server.url, lease=1), RedisEngine(redis_server.url, lease=1)
    a.start(hub_a)
    b.start(hub_b)
    try:
        with redis.Redis.from_url(redis_server.url) as store:
            for room in ("good", "bad"):
                a.announce(room, protocol.presence(room, "join", "ann"), Meta((hub_a.process_id, 1)))
            store.delete(room_key("bad", "log"))
            store.set(room_key("bad", "log"), "no stream")
            a.close()
            store.delete(room_key("bad", "log"))  # Redis takes the room's leaves again
            wait_for(lambda: [store.zcard(room_key(room, "members")) for room in ("good", "bad")] == [0, 0],
                     timeout=15, interval=0.1)
    finally:
        a.close()
        b.close()


def test_redis_back_without_its_data_is_a_new_history(redis_server, cluster, peers):
    """Redis restarted empty (its data lost): every client is closed with 1012, reconnects to a new
    epoch (a resume finds nothing: a fresh welcome, no rooms carried into the new history), and
    chats are stored and delivered again from seq 1."""
    import shutil

    a, b = cluster(2)
    ann, bob = peers(a.url), peers(b.url)
    epoch = ann.welcome["epoch"]
    ann.join("r")
    bob.join("r")
    assert [e["seq"] for e in ann.chat_all("r", ["one", "two"])] == [1, 2]
    redis_server.kill()
    for path in redis_server.directory.iterdir():  # the append-only files: the data is gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    redis_server.start()
    for peer in (ann, bob):
        peer.ws.settimeout(15)
        opcode, data = peer.ws.recv_data(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:
            opcode, data = peer.ws.recv_data(control_frame=True)
        assert int.from_bytes(data[:2], "big") == 1012
    again, other = peers(f"{a.url}?resume={ann.welcome['resume']}"), peers(b.url)
    assert again.welcome["epoch"] != epoch
    assert "resumed" not in again.welcome and again.welcome["nick"] != ann.nick
    again.join("r")
    other.join("r")
    assert again.chat_all("r", ["fresh"])[0]["seq"] == 1
    assert other.recv_type("chat")["text"] == "fresh"


class HeldHub(RoomsHub):
    """Plays the Registry, holding every delivery until `go` is set (the listener waits in it)."""

    def __init__(self):
        super().__init__(live={"r1"})
        self.holding, self.go = threading.Event(), threading.Event()

    def deliver(self, items):
        self.holding.set()
        assert self.go.wait(20)
        super().deliver(items)


def test_a_backlog_past_one_batch_is_delivered_whole_and_in_order(redis_server):
    """The listener reads RECEIVE_BATCH items at most before it delivers them. A backlog of more,
    ending just past a batch, arrives whole and in order: the message read as the batch filled is
    not left behind (nothing after it would show it missing)."""
    engine, hub = RedisEngine(redis_server.url), HeldHub()
    engine.start(hub)
    try:
        engine.subscribe("r1")
        engine.publish("r1", [("ann", "first", Meta(key="first"))], member=False)
        assert hub.holding.wait(10)  # the listener is in deliver: what follows waits on its socket
        per = 8  # chats per publish: one pub/sub message each
        for n in range(RECEIVE_BATCH // per + 1):
            engine.publish("r1", [("ann", f"{n}.{k}", Meta(key=f"{n}.{k}")) for k in range(per)], member=False)
        admin = redis.Redis.from_url(redis_server.url)
        wait_for(lambda: all(c["omem"] == "0" for c in admin.client_list(_type="pubsub")), timeout=10)
        hub.go.set()
        total = 1 + (RECEIVE_BATCH // per + 1) * per
        wait_for(lambda: len(hub.delivered) >= total, timeout=10)
        assert [event["seq"] for event in hub.delivered] == list(range(1, total + 1))
    finally:
        hub.go.set()
        engine.close()


def test_a_room_subscribed_while_the_listener_connects_gets_its_events(redis_server):
    """A join's subscribe that comes while the listener is connecting (between its list of rooms
    and its subscription being in place) is confirmed, and the room's events arrive."""
    engine, hub = RedisEngine(redis_server.url), RoomsHub(live={"r1"})
    connecting, go = threading.Event(), threading.Event()
    subscribe = engine._subscribe

    def held(pubsub, *channels):  # the listener's first subscription waits in the middle
        if pubsub is not None and pubsub is not engine._pubsub and not connecting.is_set():
            connecting.set()
            go.wait(10)
        return subscribe(pubsub, *channels)

    engine._subscribe = held
    engine.start(hub)
    failed = []
    try:
        assert connecting.wait(10)
        joiner = threading.Thread(target=lambda: failed.extend(_raised(engine.subscribe, "r1")))
        joiner.start()
        time.sleep(0.3)  # lets the subscribe run into the window (the outcome must not depend on it)
        go.set()
        joiner.join(15)
        assert failed == [] and not joiner.is_alive()
        engine.publish("r1", [("ann", "hello", Meta(key="hello"))], member=False)
        wait_for(lambda: hub.delivered, timeout=10)
        assert [event["text"] for event in hub.delivered] == ["hello"]
    finally:
        go.set()
        engine.close()


class MetaHub(RoomsHub):
    """A RoomsHub that keeps each delivered event with its Meta: `items`."""

    def __init__(self, live=()):
        super().__init__(live)
        self.items = []

    def deliver(self, items):
        with self._cond:
            self.items += [(event, meta) for _room, event, meta in items]
        super().deliver(items)


def test_a_kick_or_ban_says_whether_it_took_a_member_out_live_and_caught_up(redis_server):
    """Meta.removed (the registry's cue for the presence leave on every process): set on a kick
    or ban of a member, not on a ban of a nick in no room, nor on a lift; the same when a room is
    caught up from its log (`_fill`, as after a lost message) as when it came live."""
    engine, hub = RedisEngine(redis_server.url), MetaHub(live={"r1"})
    engine.start(hub)
    try:
        engine.subscribe("r1")
        for client, nick in enumerate(("bob", "cat"), 1):
            engine.announce("r1", protocol.presence("r1", "join", nick), Meta((hub.process_id, client)))
        moderation = [{"type": "kick", "room": "r1", "nick": "bob", "by": "op", "reason": ""},
                      {"type": "ban", "room": "r1", "nick": "zed", "by": "op", "reason": "", "duration": 60},
                      {"type": "ban", "room": "r1", "nick": "cat", "by": "op", "reason": "", "duration": 0},
                      {"type": "ban", "room": "r1", "nick": "cat", "by": "op", "reason": "", "duration": 60}]
        for event in moderation:
            engine.announce("r1", event, Meta())
        wait_for(lambda: len(hub.items) >= 6, timeout=10)
        live = [(event["type"], event["nick"], meta.removed) for event, meta in hub.items]
        assert live == [("presence", "bob", False), ("presence", "cat", False), ("kick", "bob", True),
                        ("ban", "zed", False), ("ban", "cat", False), ("ban", "cat", True)]
        caught_up = engine._fill("r1", (0, 0), None, engine.epoch)
        assert [(event["type"], event["nick"], meta.removed) for _room, event, meta in caught_up] == live
        assert engine.members("r1") == []
    finally:
        engine.close()


def _raised(call, *args) -> list:
    """[] when call(*args) returns, else [the exception]."""
    try:
        call(*args)
    except Exception as exc:  # reported by the test
        return [exc]
    return []


RESP2_WITHOUT_HIREDIS = """
import sys, threading
sys.modules["hiredis"] = None  # redis-py's own parsers: on RESP2, one without push handlers
from chatserver.engines.base import Meta
from chatserver.engines.redis import RedisEngine
from tests.fakes import RoomsHub
engine, hub = RedisEngine(sys.argv[1] + "?protocol=2"), RoomsHub(live={"r1"})
engine.start(hub)
engine.subscribe("r1")
engine.publish("r1", [("ann", "hello", Meta(key="k"))], member=False)
with hub._cond:
    assert hub._cond.wait_for(lambda: hub.delivered, timeout=10)
print(hub.delivered[0]["text"])
engine.close()
"""


def test_resp2_without_hiredis_subscribes_and_delivers(redis_server):
    """`--redis URL?protocol=2` with redis-py's own parser (no hiredis): the subscription works
    (no RESP3 push handler is asked of a parser that has none) and a chat is delivered."""
    done = subprocess.run([sys.executable, "-c", RESP2_WITHOUT_HIREDIS, redis_server.url], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "hello", done.stderr[-2000:]


def test_a_close_whose_leaves_stay_unsettled_ends_all_the_same(redis_server):
    """At shutdown the engine announces its members gone; a write there whose outcome stays
    unknown (_Unsettled) is left to expire with the lease: close() ends without raising (a raise
    made roomchat exit 1 on SIGTERM instead of 0)."""
    from chatserver.engines import redis as redis_engine

    engine = RedisEngine(redis_server.url)
    engine.start(RoomsHub())

    def unsettled(lease):
        raise redis_engine._Unsettled()

    engine._clean_up = unsettled
    engine.close()
