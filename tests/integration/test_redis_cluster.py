"""Several roomchat processes on a local 3-master Redis Cluster, each pointed at a different node,
behave as one server: real redis-server processes (started by the test), real roomchat processes."""

import threading
import time

import orjson
import pytest
import redis

from chatserver.engines.redis_scripts import ROOM_VERSIONS, ROOMS
from tests.helpers import SECRET, ann_watched, members_in, token, wait_for, with_token
from tests.integration.test_redis import stream
from tests.services import RedisCluster

pytestmark = pytest.mark.timeout(90)


def ask(peer, kind: str, **msg) -> dict:
    """Send a request; its reply of type `kind` (room events before it skipped)."""
    peer.send(**msg)
    return peer.recv_type(kind)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """One 3-master Redis Cluster for this module's tests (emptied before each)."""
    service = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield service
    service.kill()


@pytest.fixture
def processes(redis_cluster, spawn):
    """processes(*args) -> three roomchat processes, the i-th pointed at the i-th node."""
    for port in redis_cluster.ports:
        client = redis.Redis(port=port)
        client.flushall()
        client.close()
    return lambda *args: [spawn("--redis", url, *args) for url in redis_cluster.urls]


def test_three_processes_on_three_nodes_see_one_stream(redis_cluster, processes, peers):
    """Senders and receivers spread over three processes, each on its own cluster node: the room
    travels on sharded pub/sub (its shard only), and every receiver sees the same gapless chats
    and the same presence, in the same order."""
    servers = processes()
    receivers = [peers(s.url) for s in servers]
    for receiver in receivers:
        receiver.join("lobby")
    senders = [peers(servers[i % 3].url) for i in range(3)]
    for sender in senders:
        sender.join("lobby")
    per_sender = 30
    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    sharded = [set(n.execute_command("PUBSUB", "SHARDCHANNELS")) for n in nodes]
    assert sum(b"roomchat:{lobby}:events" in channels for channels in sharded) == 1  # its shard only
    assert not any(n.execute_command("PUBSUB", "CHANNELS") for n in nodes)  # no cluster-wide pub/sub
    for node in nodes:
        node.close()

    def send_all(sender):
        for i in range(per_sender):
            sender.send(type="chat", room="lobby", text=f"{sender.nick} {i}")

    threads = [threading.Thread(target=send_all, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = 3 * per_sender
    views = [stream(r, "lobby", lambda seen: sum(isinstance(x, int) for x in seen) >= total) for r in receivers]
    chats = [[x for x in view if isinstance(x, int)] for view in views]
    assert chats[0] == chats[1] == chats[2] == list(range(1, total + 1))
    tails = [view[view.index(("presence", senders[-1].nick)) + 1:] for view in views]
    assert tails[0] == tails[1] == tails[2]


def test_nicks_dms_who_rooms_and_history_across_nodes(processes, peers):
    """A nick is unique across the processes; a DM reaches it on another node's process; who and
    rooms count every process's members; history and a leave are the same everywhere."""
    a, b, c = processes()
    ann, bob, cat = peers(a.url), peers(b.url), peers(c.url)
    ann.set_nick("ann")
    assert bob.request(type="nick", nick="ANN")["code"] == "nick_taken"
    bob.set_nick("bob")
    for peer, room in ((ann, "lobby"), (bob, "lobby"), (cat, "side"), (cat, "lobby")):
        peer.join(room)
    assert ask(cat, "dm", type="dm", to="ann", text="psst")["to"] == "ann"
    assert ann.recv_type("dm")["text"] == "psst"
    assert ask(bob, "error", type="dm", to="nobody", text="x")["code"] == "no_such_user"
    assert [e["seq"] for e in ann.chat_all("lobby", ["one", "two"])] == [1, 2]
    wait_for(lambda: ask(bob, "rooms", type="rooms")["rooms"] == [{"room": "lobby", "members": 3},
                                                                 {"room": "side", "members": 1}], timeout=10)
    assert ask(cat, "who", type="who", room="lobby")["members"] == ["ann", "bob", cat.nick]
    history = ask(bob, "history", type="history", room="lobby")
    assert [m["text"] for m in history["messages"]] == ["one", "two"]
    ask(cat, "left", type="leave", room="lobby")
    wait_for(lambda: ask(ann, "who", type="who", room="lobby")["members"] == ["ann", "bob"], timeout=10)
    wait_for(lambda: ask(ann, "rooms", type="rooms")["rooms"] == [{"room": "lobby", "members": 2},
                                                                 {"room": "side", "members": 1}], timeout=10)


@pytest.mark.parametrize("kind", ["kick", "ban"])
def test_members_on_other_nodes_see_the_removed_member_leave(processes, peers, kind):
    """A kick or ban of bob (on B's node) by an operator on A: members on all three processes get
    the event, then bob's presence `leave` right after it; `who` agrees."""
    a, b, c = processes("--token-secret", SECRET)
    op = peers(with_token(a.url, token("op", op=True)))
    alice, bob, carol = members_in([a.url, b.url, c.url], peers, ["alice", "bob", "carol"])
    op.request(type=kind, room="lobby", nick="bob", **({"duration": 60} if kind == "ban" else {}))
    assert bob.recv_type(kind)["nick"] == "bob"
    leave = {"type": "presence", "room": "lobby", "event": "leave", "nick": "bob"}
    for member in (alice, carol):
        assert member.recv_type(kind)["nick"] == "bob"
        assert member.recv() == leave
        assert member.ask(type="who", room="lobby")["members"] == ["alice", "carol"]


def test_a_beat_puts_room_counts_and_its_membership_index_right(redis_cluster, processes, peers):
    """Room counts and a process's membership index, written apart from a room's own call on a
    Redis Cluster, are put right from the truth by the heartbeats whatever became of them: a room
    counted wrong under a version newer than the room's, a room listed that nobody is in, an
    index that lost its entries."""
    a, _b, _c = processes("--redis-lease", "1")
    ann, bob = peers(a.url), peers(a.url)
    ann.join("lobby")
    bob.join("lobby")
    store = redis.RedisCluster.from_url(redis_cluster.urls[0])
    try:
        [index] = store.keys("roomchat:proc:*:rooms", target_nodes=redis.RedisCluster.PRIMARIES)
        ahead = int(time.time() * 1_000_000) + 10**9  # a version 1000 s ahead of the room's
        store.zadd(ROOMS, {"lobby": 7, "ghost": 3})
        store.hset(ROOM_VERSIONS, mapping={"lobby": ahead, "ghost": 1})
        store.delete(index)
        wait_for(lambda: ask(ann, "rooms", type="rooms")["rooms"] == [{"room": "lobby", "members": 2}], timeout=10)
        wait_for(lambda: sorted(m.split(b"\n")[1].decode() for m in store.smembers(index))
                 == sorted([ann.nick, bob.nick]), timeout=10)
    finally:
        store.close()


def test_a_room_forgotten_by_the_quota_leaves_no_key_and_no_count_version(redis_cluster, processes, peers):
    """With --history-max-rooms 1 on a Redis Cluster, the quieter of two rooms nobody is in loses
    every key but its topic (a rule), and its field in ROOM_VERSIONS (the version of its count,
    kept beside `rooms` in another slot), so forgotten rooms leave nothing behind that grows."""
    a, _b, _c = processes("--redis-lease", "1", "--history-max-rooms", "1", "--token-secret", SECRET)
    talker = peers(with_token(a.url, token("ann", op=True)))
    talker.join("old")
    assert talker.request(type="topic", room="old", topic="kept")["type"] == "topic"
    talker.chat_all("old", ["a", "b"])
    talker.request(type="leave", room="old")
    store = redis.RedisCluster.from_url(redis_cluster.urls[0])
    try:
        assert store.hexists(ROOM_VERSIONS, "old")  # counted (one room with history: under the quota)
        talker.join("new")
        talker.chat_all("new", ["x"])
        def old_keys() -> set:
            return {k.decode() for k in store.keys("roomchat:{old}:*", target_nodes=redis.RedisCluster.PRIMARIES)}

        wait_for(lambda: old_keys() == {"roomchat:{old}:topic"} and not store.hexists(ROOM_VERSIONS, "old"),
                 timeout=15)
        assert store.hexists(ROOM_VERSIONS, "new")  # someone is in it: counted, kept
        assert ask(talker, "rooms", type="rooms")["rooms"] == [{"room": "new", "members": 1}]
    finally:
        store.close()


def test_a_client_resumes_on_a_process_of_another_node(processes, peers):
    """ann on the first node's process resumes on the third's: same nick and rooms, no presence
    for the watcher on the second, the old connection closed with 4002."""
    a, b, c = processes()
    watcher, ann = ann_watched(peers, b.url, a.url)
    again = peers(f"{c.url}?resume={ann.welcome['resume']}")
    assert again.welcome["nick"] == "ann" and again.welcome["rooms"] == ["lobby"]
    ann.ws.settimeout(10)
    assert ann.close_code()[0] == 4002
    again.send(type="chat", room="lobby", text="moved")
    seen = []
    while not seen or seen[-1].get("text") != "moved":
        seen.append(watcher.recv())
    assert [e["type"] for e in seen] == ["chat"]
    assert watcher.request(type="who", room="lobby")["members"] == [watcher.nick, "ann"]


def test_a_killed_process_on_a_cluster_node_is_reaped(processes, peers):
    """A process killed -9: the others see its members leave once its lease has run out."""
    a, b, _c = processes("--redis-lease", "1")
    watcher, gone = peers(b.url, timeout=20), peers(a.url)
    watcher.join("lobby")
    gone.join("lobby")
    watcher.recv_type("presence")
    a.proc.kill()
    left = watcher.recv_type("presence")
    assert (left["event"], left["nick"]) == ("leave", gone.nick)
    assert watcher.request(type="who", room="lobby")["members"] == [watcher.nick]


def test_a_killed_master_fails_over_to_its_replica(tmp_path, spawn, peers):
    """kill -9 of the master holding a room (cluster-node-timeout 2 s): until its replica takes
    over, each chat to the room is answered once, its copy or `unavailable`; then chats flow again
    on every process, with no gap, no repeat and no reset (nothing acknowledged was lost: the
    replica had it), and who and DMs work."""
    service = RedisCluster(tmp_path, replicas=1)
    try:
        servers = [spawn("--redis", url) for url in service.urls]
        sender, *receivers = [peers(s.url, timeout=30) for s in servers]
        for peer in (sender, *receivers):
            peer.join("lobby")
        for i, receiver in enumerate(receivers):  # the joins after its own
            for _ in range(len(receivers) - 1 - i):
                receiver.recv_type("presence")
        assert [e["seq"] for e in sender.chat_all("lobby", ["before"])] == [1]
        master, [replica] = service.master_of("roomchat:{lobby}:seq")
        copy = redis.Redis(port=replica)
        copy.execute_command("READONLY")
        wait_for(lambda: copy.get("roomchat:{lobby}:seq") == b"1", timeout=10)  # replicated: acknowledged
        copy.close()
        service.kill_node(master)
        answers = []
        for i in range(300):  # a chat every 0.1 s until one goes through
            reply = sender.ask(type="chat", room="lobby", text=f"during {i}", id=i)
            answers.append(reply["type"] if reply["type"] == "chat" else reply["code"])
            if reply["type"] == "chat":
                break
            time.sleep(0.1)
        assert answers[-1] == "chat" and set(answers[:-1]) <= {"unavailable"}, answers
        for receiver in receivers:
            seen = []
            while not seen or seen[-1]["text"] != reply["text"]:
                event = receiver.recv()
                if event["type"] == "chat":
                    seen.append(event)
            assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1)) and seen[0]["text"] == "before"
        assert ask(receivers[0], "who", type="who", room="lobby")["members"] == [
            sender.nick, *(r.nick for r in receivers)]
        assert ask(receivers[-1], "dm", type="dm", to=sender.nick, text="still there?")["to"] == sender.nick
    finally:
        service.kill()


def test_typing_marks_and_waiting_dms_on_a_redis_cluster(processes, peers):
    """On a Redis Cluster: typing on one process reaches a member on another (sharded pub/sub); a
    mark set on one process and a DM kept on another are found by the token holder's next
    connection on a third (each identity's keys in one slot)."""
    a, b, c = processes("--token-secret", SECRET)
    ann, bob = peers(with_token(a.url, token("ann"))), peers(b.url)
    ann.join("lobby")
    bob.join("lobby")
    ann.recv_type("presence")
    ann.send(type="typing", room="lobby")
    assert bob.recv() == {"type": "typing", "room": "lobby", "nick": "ann"}
    ann.chat_all("lobby", ["one", "two"])
    assert ask(ann, "mark", type="mark", room="lobby", seq=2)["seq"] == 2
    ann.close()

    def kept() -> dict | None:
        reply = bob.ask(type="dm", to="ann", text="hi", id="k")
        return reply if reply.get("stored") else None

    copy = wait_for(kept, timeout=15)
    again = peers(with_token(c.url, token("ann")), timeout=15)
    assert again.welcome["marks"] == {"lobby": 2}
    assert again.recv() == {k: v for k, v in copy.items() if k != "id"}


def test_marks_without_a_token_follow_a_resume_across_nodes(redis_cluster, processes, peers):
    """On a Redis Cluster: a guest's marks set on the first node's process are in `joined.mark`
    after a resume on the third's; a mark set there is found after a resume on the second's; once
    the client leaves, no node holds its marks."""
    a, b, c = processes()
    ann = peers(a.url)
    ann.set_nick("ann")
    ann.join("lobby")
    ann.chat_all("lobby", ["one", "two", "three"])
    assert ask(ann, "mark", type="mark", room="lobby", seq=2)["seq"] == 2
    again = peers(f"{c.url}?resume={ann.welcome['resume']}")
    assert again.welcome["resumed"] is True and again.join("lobby", after=3)["mark"] == 2
    assert ask(again, "mark", type="mark", room="lobby", seq=3)["seq"] == 3
    back = peers(f"{b.url}?resume={again.welcome['resume']}")
    assert back.welcome["resumed"] is True and back.join("lobby", after=3)["mark"] == 3
    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    try:
        assert sorted(len(n.keys("roomchat:{session:*")) for n in nodes) == [0, 0, 2]  # its marks, on one node
        back.close()
        wait_for(lambda: not any(n.keys("roomchat:{session:*") for n in nodes), timeout=10)
    finally:
        for node in nodes:
            node.close()


def test_a_beat_renews_a_sessions_marks_on_their_own_node(redis_cluster):
    """On a Redis Cluster a tokenless session's key and its marks' keys sit in different slots
    (their nodes may differ): a beat renews all of them (one pipeline across nodes), and the end
    of the session deletes them all."""
    from chatserver.engines.redis import RedisEngine
    from tests.integration.test_redis_resume import ProcessHub

    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    for node in nodes:
        node.flushall()
    engine = RedisEngine(redis_cluster.urls[0], resume_window=30)
    engine.start(ProcessHub("cccccccccccc", engine, {}))
    try:
        engine.keep_session(1, "tok", "ann", "")
        assert engine.set_session_mark(1, "lobby", 3) == 3
        keys = [(node, key) for node in nodes for key in node.keys("roomchat:*session*")]
        assert len(keys) == 3
        for node, key in keys:
            node.pexpire(key, 5_000)
        with engine._lock:
            engine._sessions_kept = 0.0  # the next beat renews the sessions
        engine._beat()
        assert all(node.pttl(key) > 5_000 for node, key in keys)
        engine.end_session(1)
        assert not any(node.keys("roomchat:*session*") for node in nodes)
    finally:
        engine.close()
        for node in nodes:
            node.close()


def test_a_burst_of_calls_waits_for_a_free_connection_to_a_node(redis_cluster, monkeypatch):
    """More threads calling Redis at once than the engine's pool has connections to a node (a
    burst of new clients): each waits for a free connection, none is answered `unavailable`."""
    from chatserver.engines import redis as engine_module

    monkeypatch.setattr(engine_module, "POOL_SIZE", 2)
    engine = engine_module.RedisEngine(redis_cluster.urls[0])
    failures = []

    def calls():
        for _ in range(20):
            try:
                engine.mode("lobby")
            except engine_module.Unavailable as exc:
                failures.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine._redis.close()
    assert failures == []


def test_a_subscription_redis_py_marked_for_reconnect_loses_no_dm_and_no_chat(redis_cluster):
    """When a call of any thread meets a failover, redis-py marks every connection to the nodes
    for a reconnect, the listener's subscriptions among them (as each process's calls do in
    tests/integration/test_redis_cluster_faults.py). A DM and a room's chat published after that
    mark (the DM counted as received) are both delivered: the listener reads its subscriptions
    itself, and redis-py does not connect them anew, dropping what had arrived unread."""
    from chatserver.engines.base import Meta
    from chatserver.engines.redis import RedisEngine, dm_channel
    from tests.fakes import RoomsHub

    class DmHub(RoomsHub):
        def __init__(self):
            super().__init__(live={"lobby"})
            self.dms = []

        def deliver_dm(self, client_id, event):
            with self._cond:
                self.dms.append((client_id, event))
                self._cond.notify_all()
            return True

    for port in redis_cluster.ports:
        node = redis.Redis(port=port)
        node.flushall()
        node.close()
    engine = RedisEngine(redis_cluster.urls[0])
    hub = DmHub()
    engine.start(hub)
    other = redis.RedisCluster.from_url(redis_cluster.urls[1])
    try:
        engine.subscribe("lobby")
        channel = dm_channel(hub.process_id)
        wait_for(lambda: other.pubsub_shardnumsub(channel, target_nodes=other.get_node_from_key(channel))[0][1] == 1,
                 timeout=10)
        for node in engine._redis.get_nodes():
            node.redis_connection.connection_pool.update_active_connections_for_reconnect()
        dm = {"type": "dm", "from": "bob", "to": "ann", "text": "psst"}
        assert other.spublish(channel, orjson.dumps([7, dm])) == 1
        with hub._cond:
            assert hub._cond.wait_for(lambda: hub.dms, 5), "the DM was not delivered"
        assert hub.dms == [(7, dm)]
        engine.publish("lobby", [("bob", "after the mark", Meta())], member=False)  # no member to fence
        with hub._cond:
            assert hub._cond.wait_for(lambda: hub.delivered, 5), "the chat was not delivered"
        assert [(e["seq"], e["text"]) for e in hub.delivered] == [(1, "after the mark")]
    finally:
        other.close()
        engine.close()


def test_a_connection_handed_out_during_a_failovers_closing_pass_is_the_takers_on_each_node(redis_cluster):
    """What redis-py's cluster client does to a node's pool on a connection error or timeout (a
    failover: disconnect_free_connections) closes no connection a thread just took from it: on
    each node's pool of the engine's, the taker's command is answered (tests/integration/
    test_redis_pool.py `race`; redis-py's own pool raised TypeError there)."""
    from chatserver.engines.redis import RedisEngine
    from tests.integration.test_redis_pool import race

    engine = RedisEngine(redis_cluster.urls[0])  # not started: nothing else takes connections
    try:
        nodes = engine._redis.get_nodes()
        assert len(nodes) == 3
        for node in nodes:
            race(node.redis_connection.connection_pool)
    finally:
        engine.close()
