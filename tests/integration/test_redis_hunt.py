"""Defects found by fault hunting across processes on Redis: the fixed ones are checked here;
each one still open is documented by a strict xfail test. Real redis-server, real roomchat processes, real sockets."""

import itertools
import json
import signal
import subprocess
from collections.abc import Iterator

import pytest
import redis

from chatserver.engines.redis import nick_key
from chatserver.engines.redis_scripts import EPOCH, LEASES, ROOMS
from tests.helpers import ROOMCHAT, ROOT, SECRET, roomchat_env, token, wait_for, with_token
from tests.services import RedisCluster

pytestmark = pytest.mark.timeout(90)


def test_dms_kept_while_a_holders_process_was_dead_reach_its_resume_elsewhere(cluster, peers):
    """ann (token) is on A, which is killed -9; bob on B writes to her (kept: `stored`); ann
    resumes on B with her token and resume token: she gets the kept DM right after `welcome`."""
    a, b = cluster(2, "--token-secret", SECRET, "--redis-lease", "2")
    ann = peers(with_token(a.url, token("ann")))
    ann.join("lobby")
    bob = peers(b.url, timeout=30)
    a.proc.kill()
    a.proc.wait()
    kept = bob.request(type="dm", to="ann", text="are you there?")
    assert kept["type"] == "dm" and kept.get("stored") is True, kept
    again = peers(with_token(b.url, token("ann")) + f"&resume={ann.welcome['resume']}", timeout=10)
    assert again.welcome.get("resumed") is True and again.nick == "ann"
    assert again.request(type="ping")["type"] == "dm"


def paused_past_its_lease(process, watcher, nick: str) -> None:
    """SIGSTOP `process` until `watcher` (elsewhere, in a room with `nick`) sees `nick` leave
    (the process was reaped), then SIGCONT it and wait until `watcher` sees `nick` join again."""
    process.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: (e := watcher.recv_type("presence")) and (e["event"], e["nick"]) == ("leave", nick),
                 timeout=30)
    finally:
        process.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (e := watcher.recv_type("presence")) and (e["event"], e["nick"]) == ("join", nick),
             timeout=30)


def test_a_resume_elsewhere_works_after_the_old_process_came_back_from_a_pause(cluster, peers):
    """A is paused past its lease (its members leave) and continued (they join again); then ann,
    a guest of A, resumes on B with her resume token: same nick and rooms, as before the pause."""
    a, b = cluster(2, "--redis-lease", "1")
    watcher = peers(b.url, timeout=30)
    watcher.join("lobby")
    ann = peers(a.url, timeout=30)
    ann.set_nick("ann")
    ann.join("lobby")
    paused_past_its_lease(a, watcher, "ann")
    again = peers(f"{b.url}?resume={ann.welcome['resume']}", timeout=30)
    assert (again.nick, again.welcome.get("resumed"), again.welcome.get("rooms")) == ("ann", True, ["lobby"])


def test_export_reads_a_room_from_any_node_of_a_redis_cluster(tmp_path, spawn, peers):
    """On a Redis Cluster, `export --redis` pointed at any node (as the server may be) writes the
    room's chats: every node's URL gives the same transcript."""
    service = RedisCluster(tmp_path)
    try:
        server = spawn("--redis", service.urls[0])
        peer = peers(server.url)
        peer.join("lobby")
        peer.chat_all("lobby", ["for the record"])
        outputs = [subprocess.run([*ROOMCHAT, "export", "--room", "lobby", "--format", "jsonl", "--redis", url],
                                  cwd=ROOT, env=roomchat_env(), capture_output=True, text=True, timeout=30)
                   for url in service.urls]
        assert [(o.returncode, [json.loads(line)["text"] for line in o.stdout.splitlines()]) for o in outputs] == \
            [(0, ["for the record"])] * len(service.urls), [o.stderr for o in outputs]
    finally:
        service.kill()


def who(peer, room: str) -> list:
    """`who` of `room` as `peer` is told (room events before the reply skipped)."""
    peer.send(type="who", room=room)
    return peer.recv_type("who")["members"]


def kill_master_holding_its_failover(service, master: int, replica: int):
    """kill -9 `master` with its `replica` SIGSTOPped (the other shards go on serving:
    cluster-require-full-coverage no), so that its slots stay down until the returned function
    is called: it continues the replica and waits until it has taken over."""
    for port in service.ports:
        if port not in (master, replica):
            node = redis.Redis(port=port)
            node.config_set("cluster-require-full-coverage", "no")
            node.close()
    node = redis.Redis(port=replica)
    node.config_set("cluster-replica-validity-factor", 0)  # takes over however long it was stopped
    node.close()
    stopped = service.procs[service.ports.index(replica)]
    stopped.send_signal(signal.SIGSTOP)
    service.kill_node(master)

    def fail_over():
        stopped.send_signal(signal.SIGCONT)
        node = redis.Redis(port=replica, socket_timeout=5)
        wait_for(lambda: node.execute_command("ROLE")[0] == b"master", timeout=60, interval=0.2)
        node.close()

    return fail_over


def apart_from(service, store, spawn, *args, master: int | None = None) -> tuple:
    """A roomchat process (`spawn(*args)`) with no subscription on `master` (None: the master
    holding its membership index), so that killing that master leaves its listener alone: its
    DM channel's shard is another (each process's channel is random: one on `master` is killed
    and another started). (process, its lease, master)."""
    for _ in range(20):
        before = set(store.zrange(LEASES, 0, -1))
        process = spawn(*args)
        [lease] = {lease.decode() for lease in set(store.zrange(LEASES, 0, -1)) - before}
        at = master or service.master_of(f"roomchat:proc:{lease}:rooms")[0]
        if service.master_of(f"roomchat:proc:{lease.split('.')[0]}:dm")[0] != at:
            return process, lease, at
        process.proc.kill()
        process.proc.wait()
    raise AssertionError("every process started had its DM channel on that master")


def rooms_on(service, masters: set) -> Iterator[str]:
    """Names of rooms whose keys are on one of `masters` (ports)."""
    return (r for r in (f"room{i}" for i in range(100)) if service.master_of(f"roomchat:{{{r}}}:seq")[0] in masters)


def test_a_join_during_a_failover_of_the_index_master_is_reaped_with_its_process(tmp_path, spawn, peers):
    """Redis Cluster with replicas: the master holding process A's membership index is killed -9
    and bob on A joins a room of another shard meanwhile (answered `joined`); once the replica
    has taken over and A has put its index right from its members (a beat later), A is killed -9:
    when A is reaped, bob leaves that room as A's other members leave theirs (no member of a dead
    process stays in `who` for ever)."""
    service = RedisCluster(tmp_path, replicas=1)
    store = redis.RedisCluster.from_url(service.urls[0])
    try:
        # the default lease: a heartbeat's first call to the killed master (a nick claim there)
        # waits seconds for redis-py to give up, which a lease of 1 s takes for a death
        b = spawn("--redis", service.urls[1])
        a, lease, master = apart_from(service, store, spawn, "--redis", service.urls[0])
        index = f"roomchat:proc:{lease}:rooms"
        warmup, room = itertools.islice(rooms_on(service, set(service.ports) - {master}), 2)
        other = peers(a.url, timeout=60)
        other.join(warmup)
        replica = service.master_of(index)[1][0]
        watcher, bob = peers(b.url, timeout=60), peers(a.url, timeout=60)
        watcher.join(room)
        fail_over = kill_master_holding_its_failover(service, master, replica)
        assert bob.join(room)["members"] == [watcher.nick, bob.nick]
        fail_over()
        wait_for(lambda: indexed(store, lease.split(".")[0], room, bob.nick), timeout=30, interval=0.2)
        a.proc.kill()
        a.proc.wait()
        wait_for(lambda: who(watcher, warmup) == [], timeout=30, interval=0.2)  # A was reaped
        wait_for(lambda: who(watcher, room) == [watcher.nick], timeout=30, interval=0.5)
    finally:
        store.close()
        service.kill()


def indexed(store, process: str, room: str, nick: str) -> bool:
    """True when the membership index of `process` (under its lease now: it may have been reaped
    and taken a new one) lists `nick` in `room`."""
    leases = [lease.decode() for lease in store.zrange(LEASES, 0, -1) if lease.startswith(f"{process}.".encode())]
    return any(entry.startswith(f"{room}\n{nick}\n{lease}:".encode())
               for lease in leases for entry in store.smembers(f"roomchat:proc:{lease}:rooms"))


def counted(peer, room: str) -> int:
    """The member count `rooms` gives `room` as `peer` is told (0 when it is not listed)."""
    peer.send(type="rooms")
    return next((r["members"] for r in peer.recv_type("rooms")["rooms"] if r["room"] == room), 0)


def test_rooms_counts_a_join_made_during_a_failover_of_the_counts_master(tmp_path, spawn, peers):
    """Redis Cluster with replicas: the master holding the room counts (`rooms`) is killed -9 and
    bob joins a room of another shard meanwhile (answered `joined`); once the replica has taken
    over, `rooms` counts both members, as `who` lists them."""
    service = RedisCluster(tmp_path, replicas=1)
    store = redis.RedisCluster.from_url(service.urls[0])
    try:
        master, [replica] = service.master_of(ROOMS)
        server, _lease, _master = apart_from(service, store, spawn, "--redis", service.urls[0], master=master)
        room = next(rooms_on(service, set(service.ports) - {master}))
        ann, bob = peers(server.url, timeout=60), peers(server.url, timeout=60)
        ann.join(room)
        assert counted(ann, room) == 1
        fail_over = kill_master_holding_its_failover(service, master, replica)
        assert bob.join(room)["members"] == [ann.nick, bob.nick]
        fail_over()
        assert who(ann, room) == [ann.nick, bob.nick]
        wait_for(lambda: counted(ann, room) == 2, timeout=30, interval=0.5)
    finally:
        store.close()
        service.kill()


def test_a_cluster_master_back_without_the_joins_it_acknowledged_converges(tmp_path, spawn, peers):
    """Redis Cluster without persistence: ann and carol on A and bob on B are in a room; the
    master holding the room (not the leases nor the epoch) is killed -9 and started again, empty:
    the joins are lost, no chat was. Each process notices that master's new run as it
    resubscribes and takes its clients back: `who` on every process lists the three again, and
    carol can chat there."""
    service = RedisCluster(tmp_path)
    try:
        kept = {service.master_of(key)[0] for key in (LEASES, EPOCH)}
        port = next(p for p in service.ports if p not in kept)
        room = next(rooms_on(service, {port}))
        a, b = (spawn("--redis", url) for url in service.urls[:2])
        ann, carol, bob = peers(a.url, timeout=30), peers(a.url, timeout=30), peers(b.url, timeout=30)
        for peer in (ann, bob, carol):
            peer.join(room)
        everyone = sorted([ann.nick, bob.nick, carol.nick])
        assert sorted(who(bob, room)) == everyone
        at = service.ports.index(port)
        service.kill_node(port)
        service.procs[at] = subprocess.Popen(service.procs[at].args, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
        node = redis.Redis(port=port)
        wait_for(lambda: answers(node) and node.cluster("info")["cluster_state"] == "ok", timeout=20, interval=0.1)
        node.close()
        for peer in (ann, bob):
            wait_for(lambda p=peer: sorted(who(p, room)) == everyone, timeout=30, interval=0.2)
        reply = carol.request(type="chat", room=room, text="still here", id="c")
        while reply.get("id") != "c":
            reply = carol.recv()
        assert reply["type"] == "chat", reply
    finally:
        service.kill()


def answers(node) -> bool:
    """True once the redis-server behind client `node` answers."""
    try:
        return node.ping()
    except redis.ConnectionError:
        return False


def test_a_stolen_resume_token_of_a_client_that_authenticated_later_gets_a_guest(cluster, peers):
    """An anonymous connection on A named op becomes the operator op with an `auth` message (its
    nick unchanged); its resume token presented on B without op's identity token gets an ordinary
    guest, as for a connection that presented its token at connect (PROTOCOL.md, On connect)."""
    a, b = cluster(2, "--token-secret", SECRET)
    op = peers(a.url)
    op.set_nick("op")
    assert op.request(type="auth", token=token("op", op=True))["type"] == "auth"
    op.join("lobby")
    thief = peers(f"{b.url}?resume={op.welcome['resume']}", timeout=30)
    assert thief.nick.startswith("guest-") and "resumed" not in thief.welcome, thief.welcome


def test_dms_kept_while_a_holders_process_was_reaped_reach_it_when_it_is_back(cluster, peers, redis_server):
    """ann (token) is on A, which is paused past its lease (reaped: ann leaves, her nick is free);
    bob on B writes to her meanwhile (kept: `stored`); A is continued and takes ann back (she
    joins again): ann, connected all along, gets the kept DM."""
    a, b = cluster(2, "--token-secret", SECRET, "--redis-lease", "1")
    watcher = peers(b.url, timeout=30)
    watcher.join("lobby")
    ann = peers(with_token(a.url, token("ann")), timeout=30)
    ann.join("lobby")
    store = redis.Redis.from_url(redis_server.url)
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: (e := watcher.recv_type("presence")) and (e["event"], e["nick"]) == ("leave", "ann"),
                 timeout=30)
        # the reaper frees the claims right after it announced the leaves: until then a DM goes
        # to A's channel (delivered once A is back), not into the mailbox
        wait_for(lambda: store.get(nick_key("ann")) is None, timeout=15)
        store.close()
        kept = watcher.request(type="dm", to="ann", text="are you there?")
        assert kept["type"] == "dm" and kept.get("stored") is True, kept
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (e := watcher.recv_type("presence")) and (e["event"], e["nick"]) == ("join", "ann"), timeout=30)
    ann.ws.settimeout(10)
    assert ann.recv_type("dm")["text"] == "are you there?"
