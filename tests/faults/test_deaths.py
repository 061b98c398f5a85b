"""A roomchat process that ends: killed -9 (a DM to one of its nicks), or stopped with SIGTERM
while it has many clients (the rooms they were in). Issue 16, items 8 and 9."""

import time

import pytest

from tests.faults.invariants import check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DM_PROMPT = 5.0  # seconds within which a DM to a nick nobody receives is refused (one Redis round trip)


def test_a_dm_to_a_nick_on_a_killed_process_is_refused_at_once(rig):
    """kill -9 of the process holding vic: a DM to vic right after gets `no_such_user` promptly
    (never a confirmation), DMs between live clients still go through, and vic leaves the room."""
    a, b = rig.node("A"), rig.node("B")
    rig.client(a, "vic", nick="vic", rooms=["lobby"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    carol = rig.client(b, "carol", nick="carol")
    before = bob.request(type="dm", to="vic", text="before")
    assert before.get("type") == "dm", f"a DM to vic on a live process was refused: {before}"

    a.kill()
    problems = []
    for attempt in range(3):
        began = time.monotonic()
        reply = bob.request(type="dm", to="vic", text=f"after the kill {attempt}")
        took = time.monotonic() - began
        if reply.get("code") != "no_such_user":
            problems.append(f"DM {attempt} to vic (its process killed -9) answered {reply}, not no_such_user")
        elif took > DM_PROMPT:
            problems.append(f"DM {attempt} to vic (its process killed -9) refused only after {took:.1f} s")
    live = bob.request(type="dm", to="carol", text="still here")
    if live.get("type") != "dm":
        problems.append(f"a DM from bob to carol (both on B) after A's death answered {live}")
    else:
        try:
            carol.wait(lambda: carol.received("dm", text="still here"), 5, "bob's DM 'still here' after A's death")
        except AssertionError as exc:
            problems.append(str(exc))

    check(rig, ["lobby"], then=lambda: problems)


def test_sigterm_of_a_busy_process_leaves_no_ghost_rooms(rig):
    """SIGTERM of a process with 40 clients in 5 rooms (one room also has a member elsewhere):
    `rooms` on the other process soon lists that room alone, with its one member, and `who`
    agrees."""
    a, b = rig.node("A"), rig.node("B")
    rooms = [f"room{i}" for i in range(5)]
    for i in range(40):
        rig.client(a, f"m{i}", rooms=[rooms[i % 5]])
    rig.client(b, "stay", nick="stay", rooms=["room0"])
    assert a.terminate() == 0, "process A did not end cleanly on SIGTERM"

    check(rig, rooms, allow_closes=(1001,))
