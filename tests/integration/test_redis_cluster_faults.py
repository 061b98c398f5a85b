"""Faults of a Redis Cluster's nodes under several roomchat processes (docs/several-machines.md,
"What each fault does"): a master paused (SIGSTOP) shorter than cluster-node-timeout; one paused
past it, whose replica takes over while it hangs and which then rejoins as a replica (a master
of rooms, or the leases' master); and a chat that master acknowledged but never replicated. Real
redis-server nodes (3 masters, a replica each, cluster-node-timeout 2 s: tests/services.py), real
roomchat processes each pointed at another master, the fault suite's recording clients and its
invariants (tests/faults/invariants.py), checked afterwards."""

import itertools
import time

import pytest
import redis
from redis.crc import key_slot

from chatserver.engines.redis_scripts import LEASES
from tests.faults.harness import Rig
from tests.faults.invariants import check, dm_reaches_one_holder
from tests.faults.test_redis_data import chat_until_acked
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NODE_TIMEOUT = 2.0  # cluster-node-timeout of tests/services.py's RedisCluster, in seconds
SHORT_PAUSE = 0.4 * NODE_TIMEOUT  # no node marks it failing: it is a stall, not a failover
FAILOVER = 30.0  # seconds a replica may take to be promoted, or an old master to follow it, at most


@pytest.fixture
def rig(tmp_path):
    """A Rig on a FaultyCluster; processes and clients are added by the test."""
    rig = Rig(tmp_path, cluster=True)
    yield rig
    rig.close()


def dm_master(rig, besides: int) -> int:
    """A master other than `besides` where a process's DM channel is subscribed, else any."""
    others = [port for port in rig.redis.masters if port != besides]
    for port in others:
        client = redis.Redis(port=port, socket_timeout=5)
        try:
            if client.execute_command("PUBSUB", "SHARDCHANNELS", "roomchat:proc:*"):
                return port
        finally:
            client.close()
    return others[0]


def room_on(rig, master: int) -> str:
    """A room name whose keys are held by the master on `master`."""
    client = redis.Redis(port=master, socket_timeout=5)
    try:
        ranges = [(start, end) for start, end, holder, *_ in client.execute_command("CLUSTER", "SLOTS")
                  if int(holder[1]) == master]
    finally:
        client.close()
    return next(name for name in (f"room{i}" for i in itertools.count())
                if any(start <= key_slot(f"roomchat:{{{name}}}:seq".encode()) <= end for start, end in ranges))


def replicated(port: int, key: str, value: bytes) -> bool:
    """Whether the replica on `port` holds `key` = `value`."""
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        client.execute_command("READONLY")
        return client.get(key) == value
    finally:
        client.close()


def processes(rig) -> list:
    """Three roomchat processes, each pointed at another master."""
    return [rig.node(name, url=url) for name, url in zip("ABC", rig.redis.urls, strict=True)]


def chatting_in(rig, processes: list, room: str, side: str):
    """Clients of `processes` in `room` and `side`; a few chats. Returns the clients by label."""
    a, b, c = processes
    clients = {
        "ann": rig.client(a, "ann", nick="ann", rooms=[room]),
        "bob": rig.client(b, "bob", nick="bob", rooms=[room, side]),
        "carol": rig.client(c, "carol", nick="carol", rooms=[room]),
        "dave": rig.client(a, "dave", nick="dave", rooms=[side]),
        "taker": rig.client(c, "taker"),
    }
    for label in ("ann", "bob", "carol"):
        clients[label].chat(room)
    return clients


def nobody_left(clients: dict) -> list:
    """Nobody left a room, and the taker never got ann's nick: no process was taken for gone."""
    problems = [f"{c} saw {e['nick']} leave {e['room']}" for c in clients.values()
                for e in c.received("presence", event="leave")]
    return problems + ([f"{clients['taker']} took ann's nick"] if clients["taker"].nick == "ann" else [])


def dms_reach(rig, sender, nicks) -> list:
    """A DM from `sender` to each of `nicks` reaches its one holder."""
    return [problem for nick in nicks for problem in dm_reaches_one_holder(rig, [sender], nick)]


def fail_over(rig, master: int, room: str, clients: dict, side: str) -> None:
    """SIGSTOP the master on `master` (it holds `room`, whose 3 chats its replica has) until its
    replica is promoted, while the taker asks for ann's nick and dave and bob chat in `side`;
    then SIGCONT it and wait until it follows the new master."""
    key = f"roomchat:{{{room}}}:seq"
    [replica] = rig.redis.master_of(key)[1]
    wait_for(lambda: replicated(replica, key, b"3"), timeout=10)  # nothing acknowledged is on the master only
    rig.redis.pause(master)
    promoted_by = time.monotonic() + FAILOVER
    while rig.redis.role(replica) != "master":
        assert time.monotonic() < promoted_by, f"the replica {replica} was not promoted within {FAILOVER:g} s"
        if clients["taker"].nick != "ann":
            clients["taker"].request(type="nick", nick="ann")
        clients["dave"].chat(side)
        clients["bob"].chat(side)
    rig.redis.resume(master)
    wait_for(lambda: rig.redis.role(master) == "slave", timeout=FAILOVER, interval=0.1)


def chat_and_check(rig, clients: dict, room: str, side: str) -> None:
    """After a failover: ann, bob and carol chat in `room` until each is acknowledged; then every
    invariant, nobody taken for gone, and a DM reaching a client of each process."""
    problems = []
    for label in ("ann", "bob", "carol"):
        problems += chat_until_acked(clients[label], room, f"after the failover from {label}", timeout=FAILOVER)
    check(rig, [room, side], then=lambda: [
        *problems, *nobody_left(clients), *dms_reach(rig, clients["dave"], ["ann", "bob", "carol"])])


def back_in(client, room: str, timeout: float = FAILOVER) -> list:
    """Once `client` is connected again after a 1012, join `room` again until it is in it, as a
    user would after `unavailable` (try again shortly); a problem if it never is."""
    deadline = time.monotonic() + timeout
    answers = []
    while not client.in_room(room):
        if time.monotonic() > deadline:
            return [f"{client} not back in {room} within {timeout:g} s: {answers[-3:]}"]
        if client.connected:
            answers.append(client.join(room))
        time.sleep(0.2)
    return []


def one_new_epoch(clients: dict, old: str) -> list:
    """Each client, once connected again into an epoch other than `old`, was closed with 1012 for
    the reset history once, and all are in one epoch; else the problems."""
    problems = []
    for client in clients.values():
        try:
            client.wait(lambda c=client: c.connected and c.epoch != old, FAILOVER, "a welcome into a new epoch")
        except AssertionError as exc:
            problems.append(str(exc))
        resets = [close for close in client.closes if close[2] == 1012 and "history was reset" in close[3]]
        if len(resets) != 1:
            problems.append(f"{client} closed {len(resets)} times for a reset history: {client.closes}")
    epochs = sorted({client.epoch for client in clients.values()} - {old})
    return problems + ([] if len(epochs) <= 1 else [f"more than one new epoch: {epochs}"])


def all_back_in(clients: dict, rooms_of: dict) -> list:
    """back_in for each client label in `rooms_of` and each of its rooms: the problems."""
    return [problem for label, rooms in rooms_of.items() for name in rooms for problem in back_in(clients[label], name)]


def test_a_master_paused_shorter_than_the_node_timeout_is_a_stall(rig):
    """The master holding a room and the processes' leases SIGSTOPped for 0.4
    cluster-node-timeout while chats are on their way: no failover; each chat is answered once,
    its copy, after the pause; nobody is taken for gone; every invariant holds (one holder per
    nick, `who` everywhere equal to the truth, every acknowledged chat in every member's stream
    once, in order)."""
    master, _replicas = rig.redis.master_of(LEASES)
    room = room_on(rig, master)
    side = room_on(rig, next(port for port in rig.redis.masters if port != master))
    clients = chatting_in(rig, processes(rig), room, side)

    rig.redis.pause(master)
    resume_at = time.monotonic() + SHORT_PAUSE
    waiting = [(clients[label], clients[label].send(type="chat", room=into, text=f"during the pause from {label}"))
               for label, into in (("ann", room), ("bob", room), ("carol", room), ("dave", side))]
    time.sleep(max(0.0, resume_at - time.monotonic()))  # the pause's length is the input
    rig.redis.resume(master)
    answers = [sender.answer(msg_id) for sender, msg_id in waiting]

    assert rig.redis.master_of(LEASES)[0] == master, "the pause was taken for a failure"
    assert [a["type"] for a in answers] == ["chat"] * 4, answers
    for label in ("ann", "bob", "carol"):
        clients[label].chat(room)
    check(rig, [room, side], allow_closes=(), then=lambda: [
        *nobody_left(clients), *dms_reach(rig, clients["taker"], ["ann", "bob"])])


def test_a_master_paused_past_the_node_timeout_fails_over_and_comes_back_a_replica(rig):
    """A master that holds a room and a process's DM channel, not the leases, SIGSTOPped until
    its replica is promoted (past cluster-node-timeout), while ann's nick is asked for and
    another room chats; then it continues and rejoins as a replica. Nobody is taken for gone (no
    leave, no nick freed); every process's subscriptions move to the new master, with what was
    published meanwhile caught up: every acknowledged chat is in every member's stream once, in
    order, and a DM reaches a client of each process; one holder per nick; `who` agrees."""
    started = processes(rig)
    leases, _ = rig.redis.master_of(LEASES)
    master = dm_master(rig, besides=leases)
    room = room_on(rig, master)
    side = room_on(rig, leases)
    clients = chatting_in(rig, started, room, side)
    fail_over(rig, master, room, clients, side)
    chat_and_check(rig, clients, room, side)


def test_the_leases_master_paused_past_the_node_timeout_reaps_nobody(rig):
    """The master holding the processes' leases (and a room) SIGSTOPped until its replica is
    promoted: every lease runs out meanwhile, and each process has a lease and a grace, from the
    failover on, to renew its own before any is reaped. So nobody is taken for gone (no leave, no
    nick freed), and every invariant holds, as in the test above."""
    started = processes(rig)
    leases, _ = rig.redis.master_of(LEASES)
    room = room_on(rig, leases)
    side = room_on(rig, next(port for port in rig.redis.masters if port != leases))
    clients = chatting_in(rig, started, room, side)
    fail_over(rig, leases, room, clients, side)
    chat_and_check(rig, clients, room, side)


def test_a_chat_acknowledged_by_a_master_and_lost_in_its_failover_starts_a_new_epoch(rig):
    """Replication is asynchronous and roomchat waits for no replica (no WAIT): a chat the
    master acknowledged that never reached its replica is lost when the replica takes over
    (here the replica is kept from it: its link is cut and the master refuses its PSYNC, by
    ACL). Every process has delivered that seq, so the next one the
    new master hands out is below or at it: one new epoch, however many processes and threads
    find the loss, every client closed with 1012 for it once and back in its rooms (the reconnect
    the page and the terminal client make), no seq given to two chats within an epoch, every
    other acknowledged chat in every stream once."""
    started = processes(rig)
    leases, _ = rig.redis.master_of(LEASES)
    master = next(port for port in rig.redis.masters if port != leases)
    room = room_on(rig, master)
    side = room_on(rig, leases)
    clients = chatting_in(rig, started, room, side)
    key = f"roomchat:{{{room}}}:seq"
    [replica] = rig.redis.master_of(key)[1]
    wait_for(lambda: replicated(replica, key, b"3"), timeout=10)
    node = redis.Redis(port=master)
    node.execute_command("ACL", "SETUSER", "default", "-psync", "-sync", "-replconf")
    node.client_kill_filter(_type="replica")
    wait_for(lambda: node.info("replication")["connected_slaves"] == 0, timeout=10)
    node.close()
    lost = clients["ann"].chat(room, "acknowledged, then lost in the failover")
    assert lost.get("seq") == 4, lost
    for label in ("ann", "bob", "carol"):  # every process delivered it
        clients[label].wait(lambda c=clients[label]: c.received("chat", seq=4), 10, "seq 4")
    assert replicated(replica, key, b"3"), "the replica got the chat after all"

    epoch = clients["ann"].epoch
    fail_over(rig, master, room, clients, side)
    rooms_of = {"ann": [room], "bob": [room, side], "carol": [room], "dave": [side]}  # as chatting_in seats them
    problems = all_back_in(clients, rooms_of)
    for label in ("ann", "bob", "carol"):
        problems += chat_until_acked(clients[label], room, f"after the failover from {label}", timeout=FAILOVER)
    check(rig, [room, side], lost=[(room, 4)], then=lambda: [*problems, *one_new_epoch(clients, epoch)])
