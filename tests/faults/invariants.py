"""The properties every fault case ends by checking (issue 16), over everything the Rig's clients
saw. check() polls where the truth takes time to reach every process (within `converge` seconds
of the fault's end) and fails with every broken property, each saying which nick, room, process
or client, what was expected and what was seen.

1. One holder per nick at every observation (the Rig's monitor, all along the case; see
   harness.DOUBLE_SETTLE for what counts as two holders).
2. On every running process, `who` of each room equals the clients really in it (connected, and
   in the room by what they were told), and `rooms` gives it that count (or omits it when empty).
3. Each member's own view of the room (from `joined` and the events since) equals that truth.
4. Every acknowledged chat reached every member that was in its room from before it was sent
   until now exactly once, in seq order, and is in `history`; a chat answered with an error
   appears nowhere.
5. No gap and no reused seq within an epoch in any client's stream.
6. Every request was answered exactly once (or its connection closed before the answer).
7. No connection closed with a code the case does not allow (1011 never).
"""

import contextlib
import itertools
import time

from chatserver.protocol import fold_nick
from tests.faults.harness import CONVERGE, Rig
from tests.faults.recorder import Closed

POLL = 0.3  # seconds between two rounds of a polled check
SHOWN = 40  # problems listed in one failure at most


def check(rig: Rig, rooms, converge: float = CONVERGE, allow_closes=(1012,), lost=(), then=None) -> None:
    """Fail with every broken property (see the module docstring). `rooms`: the rooms whose
    membership to check; `allow_closes`: close codes the case causes on purpose (besides 1000,
    the echo of a client's own close, and whatever the clients of a killed process saw);
    `lost`: (room, seq) of acknowledged chats a fault may have lost (Redis's lost second);
    `then()`: the case's own checks, run once membership has converged (or failed to), returning
    a list of problems."""
    converged = _converged(rig, rooms, converge)
    own = then() if then else []
    delivered = _delivered(rig, converge, set(lost))
    # The most telling first: a long list of rooms that did not converge comes last.
    problems = [*own, *_one_holder(rig), *_closes(rig, allow_closes), *_answered_once(rig), *_streams(rig),
                *delivered, *converged]
    if problems:
        more = f"\n... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise AssertionError(f"{len(problems)} broken: \n" + "\n".join(problems[:SHOWN]) + more)


def _ask(client, **msg):
    """A request's answer, or None when it brought none in time (the caller polls again)."""
    try:
        answer = client.request(timeout=5, **msg)
    except AssertionError:
        return None
    return None if isinstance(answer, Closed) or answer.get("type") == "error" else answer


def _converged(rig: Rig, rooms, converge: float) -> list:
    """Properties 2 and 3, polled until they hold or `converge` seconds have passed."""
    deadline = time.monotonic() + converge
    while True:
        mismatches = []
        for room in rooms:
            truth = rig.members(room)
            for node in rig.running():
                try:
                    observer = rig.observer(node)
                except Exception as exc:  # refused (1013, 503) or no welcome: polled again
                    mismatches.append(f"no client could connect to {node.name} to ask who: {exc!r}")
                    continue
                who = _ask(observer, type="who", room=room)
                listed = _ask(observer, type="rooms")
                if who is None or listed is None:
                    mismatches.append(f"who/rooms of {room} on {node.name}: no answer (unavailable or closed)")
                    continue
                if sorted(who["members"]) != truth:
                    mismatches.append(f"who of {room} on {node.name} is {sorted(who['members'])}, "
                                      f"the clients really in it are {truth}")
                count = next((r["members"] for r in listed["rooms"] if r["room"] == room), 0)
                if count != len(truth) or who["count"] != len(truth):
                    mismatches.append(f"rooms on {node.name} counts {count} in {room} (who says {who['count']}), "
                                      f"{len(truth)} are in it: {truth}")
            for client in rig.clients:
                view = client.view(room)
                if client.connected and view is not None and sorted(view) != truth:
                    mismatches.append(f"{client}'s own view of {room} is {sorted(view)}, "
                                      f"the clients really in it are {truth}")
        if not mismatches:
            return []
        if time.monotonic() > deadline:
            return [f"not converged {converge:g} s after the fault: {m}" for m in mismatches]
        time.sleep(POLL)


def _delivered(rig: Rig, converge: float, lost: set) -> list:
    """Property 4: each acknowledged chat in each stream that spans it, and in `history`."""
    problems = []
    with rig._lock:
        acked = list(rig.acked)
    deadline = time.monotonic() + converge
    for client in rig.clients:
        for epoch, room, seq, sender, text, sent_at, label in acked:
            segment = _throughout(client, epoch, room, sent_at)
            if segment is None:
                continue
            with contextlib.suppress(AssertionError):  # what did arrive is judged below
                client.wait(lambda s=segment, q=seq: (s.last or 0) >= q or not s.open,
                            max(0.0, deadline - time.monotonic()), f"chat seq {seq} of {room}")
            got = segment.chats.get(seq)
            if got != (sender, text) and (room, seq) not in lost:
                problems.append(f"{client} was in {room} all along but its stream has {got} at seq {seq}, "
                                f"acknowledged to {label} as {(sender, text)} (epoch {epoch})")
    problems += _in_history(rig, acked, lost)
    problems += _refused_nowhere(rig)
    return problems


def _throughout(client, epoch, room, sent_at):
    """The client's open stream segment of `room` in `epoch` that began before `sent_at`, if any."""
    with client._cond:
        if not client.connected or room not in client.rooms:
            return None
        return client.streams.spanning(room, epoch, sent_at)


def _in_history(rig: Rig, acked: list, lost: set) -> list:
    """Each acknowledged chat of a room's current epoch is in that room's `history`."""
    problems = []
    for room in sorted({a[1] for a in acked}):
        reader = next((c for c in rig.clients if c.connected and c.in_room(room)), None)
        if reader is None:
            continue
        stored, after = {}, 0
        for _ in range(100):
            page = _ask(reader, type="history", room=room, after=after, limit=200)
            if page is None:
                problems.append(f"history of {room} from {reader}: no answer, so its acknowledged chats went unchecked")
                stored = None
                break
            if not page["messages"]:
                break
            stored.update({m["seq"]: (m["from"], m["text"]) for m in page["messages"]})
            after = page["messages"][-1]["seq"]
        for epoch, _room, seq, sender, text, _sent, label in (a for a in acked if a[1] == room and stored is not None):
            if epoch == reader.epoch and stored.get(seq) != (sender, text) and (room, seq) not in lost:
                problems.append(f"history of {room} (asked by {reader}) has {stored.get(seq)} at seq {seq}, "
                                f"acknowledged to {label} as {(sender, text)}")
    return problems


def _refused_nowhere(rig: Rig) -> list:
    """A chat answered with an error (unavailable included) was neither stored nor sent."""
    with rig._lock:
        seen = {(room, text): (epoch, seq, who) for (epoch, room, seq), (_f, text, who) in rig.chats.items()}
    problems = []
    for client in rig.clients:
        with client._cond:
            refused = [(msg, client.answers[i][0]) for i, (_n, msg, _t) in client.sent.items()
                       if msg["type"] == "chat" and client.answers.get(i) and client.answers[i][0]["type"] == "error"]
        for msg, error in refused:
            if (msg["room"], msg["text"]) in seen:
                epoch, seq, who = seen[(msg["room"], msg["text"])]
                problems.append(f"{client}'s chat {msg['text']!r} was answered {error['code']} yet is seq {seq} "
                                f"of {msg['room']} (epoch {epoch}, seen by {who})")
    return problems


def _one_holder(rig: Rig) -> list:
    with rig._lock:
        doubles = dict(rig.doubles)
    return [f"two holders of nick {nick!r} at once: {sorted(holders)} (observed for {last - first:.1f} s)"
            for nick, (first, last, holders) in doubles.items()]


def _streams(rig: Rig) -> list:
    with rig._lock:
        problems = list(rig.violations)
    for client in rig.clients:
        problems += [f"{client}: {p}" for p in (*client.problems, *client.streams.problems)]
    return problems


def _answered_once(rig: Rig) -> list:
    """Property 6, after waiting (a few seconds at most) for answers still on their way."""
    problems = []
    for client in rig.clients:
        deadline = time.monotonic() + 10
        with client._cond:
            while time.monotonic() < deadline and any(
                    n == client.connection and client.connected and not client.answers.get(i)
                    for i, (n, _m, _t) in client.sent.items()):
                client._cond.wait(0.5)
            for msg_id, (connection, msg, _t) in client.sent.items():
                answers = client.answers.get(msg_id, [])
                if len(answers) > 1:
                    problems.append(f"{client}: {len(answers)} answers to {msg}: {answers}")
                elif not answers and connection == client.connection and client.connected:
                    problems.append(f"{client}: no answer to {msg}")
    return problems


def _closes(rig: Rig, allow) -> list:
    problems = []
    for client in rig.clients:
        for i, (_t, _n, code, reason) in enumerate(client.closes):
            if code in (1000, *allow) or client.node.ended:
                continue
            if client.closed_by_test and i == len(client.closes) - 1:
                continue  # the test closed it: a loaded server may not echo the close in time
            problems.append(f"{client} was closed with {code} ({reason!r})")
    return problems


def holders(rig: Rig, nick: str) -> list:
    """The connected clients whose nick is `nick` (folded)."""
    return [c for c in rig.clients if c.connected and c.nick and fold_nick(c.nick) == fold_nick(nick)]


_texts = itertools.count(1)


def dm_reaches_one_holder(rig: Rig, senders, nick: str) -> list:
    """A DM to `nick` from each of `senders` reaches its one holder and nobody else."""
    problems = []
    found = holders(rig, nick)
    if len(found) != 1:
        return [f"nick {nick!r} has {len(found)} holders among connected clients: {found}"]
    holder = found[0]
    for sender in senders:
        text = f"dm {next(_texts)} from {sender.label}"
        reply = sender.request(type="dm", to=nick, text=text)
        if reply.get("type") != "dm":
            problems.append(f"DM from {sender} to {nick!r} (held by {holder}) answered {reply}")
            continue
        try:
            holder.wait(lambda t=text: holder.received("dm", text=t), 5, f"the DM {text!r}")
        except AssertionError as exc:
            problems.append(str(exc))
        strays = [c for c in rig.clients if c is not holder and c is not sender and c.received("dm", text=text)]
        if strays:
            problems.append(f"DM {text!r} to {nick!r} reached {strays}, not only its holder {holder}")
    return problems
