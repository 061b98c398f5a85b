"""A member whose leave waits for Redis while its nick is free: what a Redis Cluster's failover
does when a room's master fails over and the nicks' master does not (one process's leave of that
room is refused and waits in its engine, its nick claim runs out unrenewed). On one redis-server
the process gets a Redis user of its own, refused the room's keys by ACL while its other calls go
through; then another client takes the nick elsewhere, and the room's truth and every view must
keep one holder of it."""

import time

import pytest
import redis

from tests.faults.harness import LEASE
from tests.faults.invariants import check
from tests.services import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

NICK_LEASES = 6  # a nick claim lasts this many leases unrenewed (engines/redis.py NICK_LEASES)
ROOM = "cut"  # its keys are roomchat:{cut}:*, refused to A's user while the fault lasts
REFUSED = ["resetkeys", "~roomchat:[^{]*", "~roomchat:{[^c]*"]  # every key of A's but the room's


def refused_the_room(rig):
    """Process A on a Redis user of its own (every key, channel and command, until `refuse`);
    returns (A, the admin connection, refuse(on))."""
    admin = redis.Redis(port=rig.redis.port, socket_timeout=5)
    admin.execute_command("ACL", "SETUSER", "a", "on", "nopass", "~*", "&*", "+@all")
    a = rig.node("A", url=f"redis://a@127.0.0.1:{rig.redis.port}/0")

    def refuse(on: bool) -> None:
        admin.execute_command("ACL", "SETUSER", "a", *(REFUSED if on else ["~*"]))

    return a, admin, refuse


def seen_of(client, since: float) -> list:
    """The presence and nick events `client` received since `since`, in order, in short."""
    with client._cond:
        return [(e["type"], e.get("event", e.get("old")), e["nick"]) for t, _n, e in client.events
                if t >= since and e.get("type") in ("presence", "nick")]


@pytest.mark.parametrize("how", ["rename", "join"])
def test_a_nick_taken_over_a_leave_waiting_for_redis_is_left_first(rig, how):
    """carol (on A) closes while A's writes to her room are refused: her leave waits in A, her
    claim runs out. Another client on B takes `carol` and is in the room (renamed there from a
    guest nick, or named first and then joining): bob sees the old carol leave, then the
    newcomer's nick change or join, so his view, everyone's `who` and Redis's members hold one
    carol, and so they do once A's leave goes through (it finds another owner: nothing)."""
    a, admin, refuse = refused_the_room(rig)
    b = rig.node("B")
    carol = rig.client(a, "carol", nick="carol", rooms=[ROOM])
    bob = rig.client(b, "bob", nick="bob", rooms=[ROOM])
    bob.chat(ROOM)

    refuse(True)
    carol.close()  # A's leave of the room is refused: it waits; the release waits behind it
    wait_for(lambda: admin.get("roomchat:nick:carol") is None, timeout=NICK_LEASES * LEASE + 10, interval=0.2)
    assert admin.zscore(f"roomchat:{{{ROOM}}}:members", "carol") is not None, "carol's leave was not held"

    since = time.monotonic()
    new = rig.client(b, "new carol", nick=None if how == "rename" else "carol", rooms=[ROOM])
    if how == "rename":
        assert new.set_nick("carol").get("type") == "nick"
        last = ("nick", new.received("nick", since)[0]["old"], "carol")
    else:
        last = ("presence", "join", "carol")
    bob.wait(lambda: last in seen_of(bob, since), 10, f"{last}")
    assert seen_of(bob, since)[-2:] == [("presence", "leave", "carol"), last], seen_of(bob, since)
    assert sorted(bob.view(ROOM)) == ["bob", "carol"], f"bob's view of {ROOM} while A's leave waits"

    refuse(False)  # A's leave goes through: it finds carol held by another owner
    new.chat(ROOM)
    check(rig, [ROOM], allow_closes=())
    admin.close()
