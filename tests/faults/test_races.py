"""Races across processes with no fault injected: many clients claiming a few nicks at once, and
an operator's ban racing the target's join on another process. Issue 16, item 5."""

import pytest

from tests.faults.invariants import check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

# Look-alike spellings of one nick each (protocol.fold_nick): a claim of any is a claim of all.
SPELLINGS = {
    "bill": ["bill", "BILL", "bi11", "Bi1l", "b1ll", "BIll"],
    "moe": ["moe", "MOE", "rnoe", "m0e", "RN0E", "Moe"],
    "sal": ["sal", "SAL", "sa1", "Sal", "SA1", "sAl"],
}
BAN_ROUNDS = 30


def test_concurrent_claims_of_a_few_nicks_have_one_winner_each(rig):
    """18 clients on 3 processes ask at once for 3 nicks, each in a look-alike spelling, 3 rounds:
    each nick has exactly one winner per round (the others get nick_taken), and no two clients
    ever hold one nick."""
    nodes = [rig.node(name) for name in "ABC"]
    clients = [rig.client(nodes[i % 3], f"c{i}") for i in range(18)]
    problems = []
    for round_ in range(3):
        asked = []
        for i, client in enumerate(clients):
            base = list(SPELLINGS)[i % 3]
            spelling = SPELLINGS[base][(i // 3 + round_) % 6] + str(round_)
            asked.append((client, base, spelling, client.send(type="nick", nick=spelling)))
        winners = {base: [] for base in SPELLINGS}
        for client, base, spelling, msg_id in asked:
            reply = client.answer(msg_id)
            if reply.get("type") == "nick":
                winners[base].append(f"{client.label} on {client.node.name} as {spelling}")
            elif reply.get("code") != "nick_taken":
                problems.append(f"round {round_}: {client} asking for {spelling} got {reply}")
        problems += [f"round {round_}: {base}{round_} has {len(won)} winners: {won}"
                     for base, won in winners.items() if len(won) != 1]
    check(rig, [], then=lambda: problems, allow_closes=())


def test_a_ban_racing_the_targets_join_on_another_process(rig):
    """An operator on A bans tgt from a room while tgt joins it on B, 30 times (the two requests
    sent in either order): every join is answered once, `joined` or `forbidden`; no connection
    closes (1011 least of all); tgt ends in none of the rooms, by `who` everywhere and by its own
    view."""
    a, b = rig.node("A"), rig.node("B")
    op = rig.client(a, "op", token_for="op", op=True)
    tgt = rig.client(b, "tgt", token_for="tgt")
    rooms = [f"race{i}" for i in range(BAN_ROUNDS)]
    problems = []
    for i, room in enumerate(rooms):
        if tgt.gone:  # closed (the close is one of the failures): tgt connects again, as people do
            tgt = rig.client(b, f"tgt{i}", token_for="tgt")
        requests = [(op, {"type": "ban", "room": room, "nick": "tgt", "duration": 600}),
                    (tgt, {"type": "join", "room": room})]
        sent = [(client, msg, client.send(**msg)) for client, msg in (requests if i % 2 else requests[::-1])]
        for client, msg, msg_id in sent:
            reply = client.answer(msg_id)
            wanted = ("joined", "forbidden") if msg["type"] == "join" else ("ban",)
            if reply.get("type") not in wanted and reply.get("code") not in wanted:
                problems.append(f"{room}: {client}'s {msg} answered {reply}, not one of {wanted}")
    check(rig, rooms, allow_closes=(), then=lambda: problems + [
        f"{c} ended in {room}, which bans tgt" for c in rig.clients for room in rooms if c.in_room(room)])
