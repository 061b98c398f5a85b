"""Faults of one process's link to Redis, through a TCP proxy: blackholed (no FIN, no RST: bytes
wait) for several leases, or a short blip, blackholed or cut. Issue 16, items 1, 3 and 4."""

import time

import pytest

from tests.faults.harness import LEASE
from tests.faults.invariants import check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def banned_cannot_post(banned, room: str) -> list:
    """`banned` (banned from `room`) can neither chat there nor join it again."""
    problems = []
    reply = banned.chat(room)
    if reply.get("type") == "chat":
        problems.append(f"{banned}, banned from {room}, posted seq {reply['seq']} there after the link healed")
    reply = banned.join(room)
    if reply.get("type") != "error" or reply.get("code") != "forbidden":
        problems.append(f"{banned}, banned from {room}, asked to join it again and got {reply}, not forbidden")
    return problems


def outage_while_the_room_changes(rig, seconds: float, cut: bool = False) -> None:
    """A's link blackholed (and with `cut`, its connections closed: reconnects wait too) for
    `seconds` while on B members chat, leave, join and rename and an operator bans mal, a member
    on A; then it heals, someone joins and A's members chat. Checks every invariant, and that the
    ban holds on A."""
    a, b = rig.node("A", proxied=True), rig.node("B")
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    mal = rig.client(a, "mal", nick="mal", rooms=["lobby"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    carol = rig.client(b, "carol", nick="carol", rooms=["lobby"])
    op = rig.client(b, "op", token_for="op", op=True)
    ann.chat("lobby")
    bob.chat("lobby")

    a.proxy.blackhole()
    if cut:
        a.proxy.cut()
    heal_at = time.monotonic() + seconds
    bob.chat("lobby")
    carol.request(type="leave", room="lobby")
    rig.client(b, "dave", nick="dave", rooms=["lobby"])
    bob.set_nick("bobby")
    ban = op.request(type="ban", room="lobby", nick="mal", duration=600, reason="spam")
    assert ban.get("type") == "ban", f"the operator's ban on B was refused during A's outage: {ban}"
    bob.chat("lobby")
    time.sleep(max(0.0, heal_at - time.monotonic()))
    a.proxy.heal()
    rig.client(b, "erin", nick="erin", rooms=["lobby"])
    ann.chat("lobby")

    check(rig, ["lobby"], then=lambda: banned_cannot_post(mal, "lobby"))


def test_a_blackholed_link_heals_with_presence_and_rules(rig):
    """A's link to Redis blackholed for 3.5 leases while on B members chat, join, leave and rename
    and an operator bans a member of A: after it heals, presence converges everywhere, every
    acknowledged chat arrived once, and the ban holds on A (the banned client cannot post)."""
    outage_while_the_room_changes(rig, 3.5 * LEASE)


@pytest.mark.parametrize("blip", ["blackhole", "cut"])
def test_a_short_blip_while_presence_changes_converges(rig, blip):
    """A's link blackholed (or cut, reconnects waiting) for 1.5 s while members join, leave and
    rename on B and an operator bans a member of A: every view and `who` converge, and the ban
    holds on A."""
    outage_while_the_room_changes(rig, 1.5, cut=blip == "cut")
