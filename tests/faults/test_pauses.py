"""Faults of time: a roomchat process paused past its lease (SIGSTOP), and redis-server stalled
(SIGSTOP, or DEBUG SLEEP) for several leases. Issue 16, items 1 and 2."""

import time

import pytest

from tests.faults.harness import LEASE
from tests.faults.invariants import check, dm_reaches_one_holder, holders

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def test_a_paused_process_comes_back_to_one_holder_per_nick(rig):
    """A process SIGSTOPped for 4 leases while a client elsewhere asks for its clients' nicks and
    members come and go: after SIGCONT there is one holder per nick, `who` on every process equals
    the clients in the room, and DMs to those nicks reach their one holder."""
    a, b, c = rig.node("A"), rig.node("B"), rig.node("C")
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    rig.client(a, "al", nick="al", rooms=["lobby", "side"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    carol = rig.client(b, "carol", nick="carol", rooms=["lobby", "side"])
    dave = rig.client(c, "dave", nick="dave", rooms=["lobby"])
    andy = rig.client(a, "andy", nick="andy")  # sends DMs from the paused process afterwards
    takers = [rig.client(b, "taker1"), rig.client(c, "taker2")]
    ann.chat("lobby")
    bob.chat("lobby")

    a.pause()
    resume_at = time.monotonic() + 4 * LEASE
    carol.request(type="leave", room="side")
    rig.client(c, "erin", nick="erin", rooms=["lobby", "side"])
    bob.chat("lobby")
    while time.monotonic() < resume_at:  # the paused process's nicks, asked for again and again
        for taker, nick in zip(takers, ("ann", "al"), strict=True):
            if taker.nick != nick:
                taker.request(type="nick", nick=nick)
        time.sleep(0.2)
    dave.chat("lobby")
    a.resume()
    bob.chat("lobby")

    check(rig, ["lobby", "side"], then=lambda: [
        *dm_reaches_one_holder(rig, [andy, bob, dave], "ann"),
        *dm_reaches_one_holder(rig, [andy, carol, dave], "al"),
    ])


@pytest.mark.parametrize("stall", ["sigstop", "debug-sleep"])
def test_a_redis_stall_frees_no_nick_of_a_connected_client(rig, stall):
    """redis-server stalled for 3 leases (SIGSTOP, or DEBUG SLEEP) while a member leaves: once
    it is back, nobody can take a connected client's nick (on any process), a DM reaches the
    right client, and no live process's members are lost from `who`."""
    a, b = rig.node("A"), rig.node("B")
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    carol = rig.client(b, "carol", nick="carol", rooms=["lobby"])
    newcomers = [rig.client(a, "new1"), rig.client(b, "new2")]
    ann.chat("lobby")

    if stall == "sigstop":
        rig.redis.pause()
        carol.send(type="leave", room="lobby")  # answered once Redis is back, or unavailable
        time.sleep(3 * LEASE)
        rig.redis.resume()
    else:
        sleeper = rig.redis.sleep(3 * LEASE)
        carol.send(type="leave", room="lobby")
        sleeper.join(3 * LEASE + 30)

    taken = {}  # nick -> how a newcomer took it (it keeps it: the checks then show two holders)
    back = time.monotonic()
    watch_until = back + 4 * LEASE  # past any claim that was not renewed meanwhile
    while time.monotonic() < watch_until:
        for newcomer in (n for n in newcomers if n.nick not in taken):
            for nick in (n for n in ("ann", "bob", "carol") if n not in taken):
                reply = newcomer.request(type="nick", nick=nick)
                if reply.get("type") == "nick" and [h for h in holders(rig, nick) if h is not newcomer]:
                    taken[nick] = (f"{newcomer} took {nick!r} from a connected client, "
                                   f"{time.monotonic() - back:.1f} s after the stall")
                    break
        time.sleep(0.2)
    bob.chat("lobby")

    check(rig, ["lobby"], then=lambda: [
        *taken.values(),
        *dm_reaches_one_holder(rig, [bob, newcomers[0]], "ann"),
        *dm_reaches_one_holder(rig, [ann, newcomers[1]], "bob"),
    ])
