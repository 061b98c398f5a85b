"""Faults of what Redis holds: restarted from an append-only file that lost its last writes, and a
chat held inside Redis past the engine's read timeout. Issue 16, items 6 and 7."""

import time

import pytest

from tests.faults.invariants import check
from tests.faults.recorder import Closed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HOLD = 3.0  # seconds Redis sleeps with a chat's call waiting: longer than the engine's read timeout (2 s today)
PROMPT = 10.0  # seconds within which a ping after the held chat must be answered (a stall was 30 s)


def chat_until_acked(sender, room: str, text: str, timeout: float = 15) -> list:
    """Send `text` to `room` until it is acknowledged (retrying after `unavailable`, and after a
    1012 once the client is back in the room); a problem if it never is."""
    deadline = time.monotonic() + timeout
    answers = []
    while time.monotonic() < deadline:
        try:
            reply = sender.request(timeout=max(1.0, deadline - time.monotonic()), type="chat", room=room,
                                   text=f"{text} #{len(answers)}")
        except AssertionError as exc:
            return [f"{exc} (while Redis was back from its restart)"]
        answers.append(reply)
        if reply.get("type") == "chat":
            return []
        if sender.gone:
            return [f"{sender}: closed for good ({sender.closes[-1]}) before a chat was acknowledged in {room}"]
        time.sleep(0.3)
    return [f"{sender}: no chat acknowledged in {room} within {timeout:g} s of Redis's restart: {answers[-5:]}"]


def test_redis_restarted_from_an_aof_that_lost_its_tail_reuses_no_seq(rig):
    """kill -9 of Redis and a restart from an append-only file cut before the last 8 acknowledged
    chats: no seq is given to two chats within one epoch (a server that finds its history
    replaced starts a new epoch and closes with 1012), every acknowledged chat that survived is
    in every stream once, and chatting goes on."""
    a, b = rig.node("A"), rig.node("B")
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    rig.client(b, "carol", nick="carol", rooms=["lobby"])
    for _ in range(3):
        ann.chat("lobby")
        bob.chat("lobby")
    kept = rig.redis.aof_size()
    lost = [(r["room"], r["seq"]) for r in (s.chat("lobby") for s in (ann, bob, ann, bob, ann, bob, ann, bob))]
    assert all(seq is not None for _room, seq in lost), lost
    cut = rig.redis.crash_and_lose_tail(kept)
    assert cut > 0, "the append-only file had nothing after the mark to cut"

    problems = []
    for round_ in range(3):
        for sender in (ann, bob):
            if not problems:
                problems += chat_until_acked(sender, "lobby", f"after the restart {round_} from {sender.label}")
    rig.client(a, "late", nick="late", rooms=["lobby"])  # a stream read from history now

    check(rig, ["lobby"], lost=lost, then=lambda: problems)


@pytest.mark.parametrize("hold", ["replies-held", "debug-sleep"])
def test_a_chat_held_inside_redis_gets_exactly_one_answer(rig, hold):
    """A chat whose call to Redis gets no answer for 3 s (longer than the engine's read timeout):
    Redis's replies to A held by the proxy (the chat is stored and published, A hears nothing),
    or DEBUG SLEEP sent right after the chat. The sender gets exactly one answer; an `unavailable`
    chat never appears afterwards, an acknowledged one is in every stream once; the sender's
    later requests are answered promptly."""
    a, b = rig.node("A", proxied=True), rig.node("B")
    ann = rig.client(a, "ann", nick="ann", rooms=["lobby"])
    bob = rig.client(b, "bob", nick="bob", rooms=["lobby"])
    ann.chat("lobby")

    if hold == "replies-held":
        a.proxy.hold_replies_after(b"held in Redis")
        chat = ann.send(type="chat", room="lobby", text="held in Redis")
        assert a.proxy.held.wait(10), "A never sent the chat to Redis"
        time.sleep(HOLD)
        a.proxy.heal()
    else:
        chat = ann.send(type="chat", room="lobby", text="held in Redis")
        rig.redis.sleep(HOLD).join(HOLD + 30)
    first = ann.answer(chat)
    problems = []
    if isinstance(first, Closed):
        problems.append(f"{ann}'s connection closed ({first.code}) instead of answering the held chat")
    try:
        ann.request(timeout=PROMPT, type="ping")
    except AssertionError as exc:
        problems.append(f"after the held chat's answer ({first}): {exc}")
    problems += chat_until_acked(ann, "lobby", "after the hold")
    problems += chat_until_acked(bob, "lobby", "from bob after the hold")
    # bob's chat was stored after the held one (if that was stored at all): once ann has it, a
    # held chat carried out late has reached every stream too.
    try:
        ann.wait(lambda: ann.received("chat", **{"from": "bob"}), 10, "bob's chat after the hold")
    except AssertionError as exc:
        problems.append(str(exc))

    check(rig, ["lobby"], then=lambda: problems)
