"""The selftest's checks, one function per line of output, in the order they run.

Each takes a Probe, opens the connections it needs, and raises CheckFailed (the server broke
protocol v1, PROTOCOL.md) or Skip (the server's limits make the check impractical). Its
docstring's first line is what the output says when it passes.
"""

import json
import threading
import time

from chatclient.selftest_client import CheckFailed, Probe, Skip

CHECKS: list = []  # (name, function), in running order
SENDERS, MESSAGES = 4, 10  # the ordering check: connections sending at once, chats each
MAX_PROVOKE = 500  # requests we are willing to send to reach a limit (rate_burst, max_rooms)


def check(name: str):
    def register(fn):
        CHECKS.append((name, fn))
        return fn

    return register


def fail_unless(condition: bool, why: str) -> None:
    if not condition:
        raise CheckFailed(why)


def in_room(probe: Probe, count: int) -> tuple[str, list]:
    """A fresh room and `count` connections that have joined it, in order; each has seen the
    presence joins of those after it, so nothing is left unread."""
    room = probe.name("room")
    conns = [probe.connect(f"member{i + 1}") for i in range(count)]
    for i, conn in enumerate(conns):
        conn.request("joined", type="join", room=room)
        for earlier in conns[:i]:
            earlier.expect("presence", room=room, event="join", nick=conn.nick)
    return room, conns


def texts(events: list) -> list:
    return [e["text"] for e in events]


# -- each request type -----------------------------------------------------------------------


@check("welcome")
def check_welcome(probe: Probe) -> None:
    """the first frame is welcome: a nick of its own for each connection, one epoch, the limits"""
    a, b = probe.connect("a"), probe.connect("b")
    fail_unless(a.nick.casefold() != b.nick.casefold(), f"two connections were both given nick {a.nick!r}")
    fail_unless(a.welcome["epoch"] == b.welcome["epoch"], "two connections got different epochs")


@check("nick")
def check_nick(probe: Probe) -> None:
    """nick: the reply has old and new nick, room members see it, a change of case is allowed"""
    probe.skip_with_tokens()
    _room, (a, b) = in_room(probe, 2)
    old, new = a.nick, probe.name("nick")
    reply = a.request("nick", type="nick", nick=new)
    fail_unless((reply["old"], reply["nick"]) == (old, new), f"nick reply {reply}, expected old {old!r}")
    fail_unless("id" not in b.expect("nick", old=old, nick=new), "the room's copy of the nick event has the id")
    fail_unless(a.request("nick", type="nick", nick=new.upper())["nick"] == new.upper(), "case change refused")


@check("join")
def check_join(probe: Probe) -> None:
    """join: joined lists members in join order and history; members see presence; a rejoin does not"""
    room = probe.name("room")
    a, b = probe.connect("a"), probe.connect("b")
    first = a.request("joined", type="join", room=room)
    fail_unless((first["room"], first["members"], first["history"]) == (room, [a.nick], []),
                f"joined for a new room: {first}")
    second = b.request("joined", type="join", room=room)
    fail_unless(second["members"] == [a.nick, b.nick], f"members {second['members']}, expected join order")
    a.expect("presence", room=room, event="join", nick=b.nick)
    again = b.request("joined", type="join", room=room)
    fail_unless(again["members"] == [a.nick, b.nick], f"members after a rejoin: {again['members']}")
    a.request("pong", type="ping")  # anything b's rejoin sent to a is queued before this pong
    fail_unless(not [e for e in a.pending if e["type"] == "presence"], "a rejoin announced presence again")


@check("chat")
def check_chat(probe: Probe) -> None:
    """chat: every member gets it with the room's next seq; only the sender's copy has the id"""
    room, (a, b) = in_room(probe, 2)
    ack = a.request("chat", type="chat", room=room, text="hello \u00e9\u6f22 \U0001f600")
    fail_unless((ack["room"], ack["from"], ack["text"]) == (room, a.nick, "hello \u00e9\u6f22 \U0001f600"),
                f"the sender's copy: {ack}")
    got = b.expect("chat", room=room)
    fail_unless("id" not in got, "a member's copy carries the sender's id")
    fail_unless({**got, "id": ack["id"]} == ack, f"member got {got}, sender {ack}")
    second = b.request("chat", type="chat", room=room, text="second")
    fail_unless(second["seq"] == ack["seq"] + 1, f"seq {ack['seq']} then {second['seq']}")
    a.expect("chat", room=room, seq=second["seq"], text="second")


@check("dm")
def check_dm(probe: Probe) -> None:
    """dm: the recipient gets it (nick in any case), the sender gets the same event with its id"""
    a, b = probe.connect("a"), probe.connect("b")
    copy = a.request("dm", type="dm", to=b.nick.swapcase(), text="psst")
    fail_unless((copy["from"], copy["to"].casefold(), copy["text"]) == (a.nick, b.nick.casefold(), "psst"),
                f"the sender's copy: {copy}")
    got = b.expect("dm", text="psst")
    fail_unless("id" not in got and got["from"] == a.nick, f"the recipient's copy: {got}")


@check("rooms")
def check_rooms(probe: Probe) -> None:
    """rooms: lists a room that has members, with their count"""
    room, (a, _b) = in_room(probe, 2)
    listed = {r["room"]: r["members"] for r in a.request("rooms", type="rooms")["rooms"]}
    fail_unless(listed.get(room) == 2, f"room {room!r} listed with {listed.get(room)!r} members, expected 2")


@check("who")
def check_who(probe: Probe) -> None:
    """who: the members of a room in join order, and [] for a room nobody is in"""
    room, (a, b) = in_room(probe, 2)
    reply = a.request("who", type="who", room=room)
    fail_unless((reply["room"], reply["members"]) == (room, [a.nick, b.nick]), f"who: {reply}")
    empty = a.request("who", type="who", room=probe.name("room"))
    fail_unless(empty["members"] == [], f"who for an empty room: {empty}")


@check("history")
def check_history(probe: Probe) -> None:
    """history: newest, before, after and limit page through stored events, oldest first"""
    room, (a,) = in_room(probe, 1)
    seqs = [a.request("chat", type="chat", room=room, text=f"h{i}")["seq"] for i in range(5)]
    pages = {
        "newest 2": ({"limit": 2}, seqs[3:]),
        "2 before the 4th": ({"before": seqs[3], "limit": 2}, seqs[1:3]),
        "2 after the 1st": ({"after": seqs[0], "limit": 2}, seqs[1:3]),
        "after the last": ({"after": seqs[4]}, []),
    }
    for what, (fields, expected) in pages.items():
        reply = a.request("history", type="history", room=room, **fields)
        got = [m["seq"] for m in reply["messages"]]
        fail_unless(got == expected, f"history {what}: seqs {got}, expected {expected}")
        fail_unless(texts(reply["messages"]) == [f"h{seqs.index(s)}" for s in expected], f"history {what}: texts")


@check("leave")
def check_leave(probe: Probe) -> None:
    """leave: the reply is left; members see presence leave, also when a member disconnects"""
    room, (a, b, c) = in_room(probe, 3)
    fail_unless(b.request("left", type="leave", room=room)["room"] == room, "left names another room")
    a.expect("presence", room=room, event="leave", nick=b.nick)
    c.close()
    a.expect("presence", room=room, event="leave", nick=c.nick)


@check("ping")
def check_ping(probe: Probe) -> None:
    """ping: pong comes back with the request's id, an integer or a string"""
    a = probe.connect("a")
    a.request("pong", type="ping")
    a.send(type="ping", id="selftest-\u00e9")
    a.reply_to("selftest-\u00e9", "pong")


# -- what a client can rely on ----------------------------------------------------------------


@check("ordering")
def check_ordering(probe: Probe) -> None:
    """4 connections send 10 chats each at once: all members see seqs 1.. with no gap, identically"""
    room, conns = in_room(probe, SENDERS + 1)  # the last one only listens
    senders, total = conns[:SENDERS], SENDERS * MESSAGES
    start, errors = threading.Barrier(SENDERS), []

    def send_all(conn) -> None:
        try:
            start.wait(conn.timeout)
            for i in range(MESSAGES):
                conn.send(type="chat", room=room, text=f"{conn.nick} {i}", id=i)
        except (CheckFailed, threading.BrokenBarrierError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send_all, args=(c,), daemon=True) for c in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise CheckFailed(str(errors[0]))
    views = [[conn.expect("chat", room=room) for _ in range(total)] for conn in conns]
    seqs = [e["seq"] for e in views[-1]]
    for i, seq in enumerate(seqs):
        fail_unless(seq == i + 1, f"the listener's chat #{i + 1} has seq {seq}, expected {i + 1} "
                    f"(seqs {seqs[max(0, i - 2):i + 3]}...)")
    plain = [[(e["seq"], e["from"], e["text"]) for e in view] for view in views]
    for conn, view in zip(conns, plain, strict=True):
        fail_unless(view == plain[-1], f"{conn.label} saw another order than the listener")
    for conn, view in zip(senders, views, strict=False):
        own = [e for e in view if e["from"] == conn.nick]
        fail_unless(texts(own) == [f"{conn.nick} {i}" for i in range(MESSAGES)], f"{conn.label}'s chats out of order")
        fail_unless([e.get("id") for e in own] == list(range(MESSAGES)), f"{conn.label}'s copies lack their ids")
        fail_unless(all("id" not in e for e in view if e["from"] != conn.nick), f"{conn.label} got others' ids")


@check("resume")
def check_resume(probe: Probe) -> None:
    """join with after: exactly the missed events, same epoch, then live events with no gap"""
    room, (a, b) = in_room(probe, 2)
    for i in range(2):
        a.request("chat", type="chat", room=room, text=f"seen{i}")
        last = b.expect("chat", room=room)["seq"]
    epoch = b.welcome["epoch"]
    b.close()
    missed = [a.request("chat", type="chat", room=room, text=f"missed{i}") for i in range(3)]
    c = probe.connect("b again")
    fail_unless(c.welcome["epoch"] == epoch, "the epoch changed though the server did not restart")
    joined = c.request("joined", type="join", room=room, after=last)
    got, expected = ([(e["seq"], e["from"], e["text"]) for e in events] for events in (joined["history"], missed))
    fail_unless(got == expected, f"resumed history {got}, expected {expected}")
    fail_unless(not joined.get("truncated"), "a 3-event resume says truncated")
    live = a.request("chat", type="chat", room=room, text="live")
    c.expect("chat", room=room, seq=missed[-1]["seq"] + 1, text="live")
    fail_unless(live["seq"] == missed[-1]["seq"] + 1, "the live event's seq skips")


# -- each error code ----------------------------------------------------------------------------


def refusals(code: str, doc: str, *requests: tuple) -> None:
    """Register a check that sends each (raw text, id it carries) on one connection and expects
    error `code` with that id for each, the connection staying open."""

    def run(probe: Probe) -> None:
        conn = probe.connect("a")
        for raw, msg_id in requests:
            conn.refused(code, raw, msg_id)

    run.__doc__ = doc
    CHECKS.append((f"error {code}", run))


refusals("bad_json", "a frame that is not JSON, or NaN: bad_json, and the connection stays open",
         ('{"type": "ping", ', None), ('{"type": "ping", "x": NaN}', None))
refusals("bad_message", "not an object, no type, a missing or mistyped field: bad_message with the request's id",
         ("[1, 2]", None), ('{"text": "no type"}', None), ('{"type": "chat", "text": "no room", "id": 1}', 1),
         ('{"type": "history", "room": "r", "limit": "ten", "id": "x"}', "x"))
refusals("unknown_type", "a type the protocol does not have: unknown_type with the request's id",
         ('{"type": "shout", "id": 3}', 3))
refusals("bad_nick", "a nick with a space, or 33 characters: bad_nick",
         ('{"type": "nick", "nick": "two words", "id": 4}', 4), (json.dumps({"type": "nick", "nick": "n" * 33}), None))
refusals("bad_room", "a room name with a space, or 65 characters: bad_room",
         ('{"type": "join", "room": "two words", "id": 6}', 6), (json.dumps({"type": "join", "room": "r" * 65}), None))


@check("error nick_taken")
def check_nick_taken(probe: Probe) -> None:
    """another connection's nick, in other case: nick_taken"""
    probe.skip_with_tokens()
    a, b = probe.connect("a"), probe.connect("b")
    b.refused("nick_taken", json.dumps({"type": "nick", "nick": a.nick.swapcase(), "id": 5}), msg_id=5)


@check("error not_in_room")
def check_not_in_room(probe: Probe) -> None:
    """chat, leave or history for a room you are not in: not_in_room"""
    a = probe.connect("a")
    room = probe.name("room")
    for kind, extra in (("chat", {"text": "hi"}), ("leave", {}), ("history", {})):
        a.refused("not_in_room", json.dumps({"type": kind, "room": room, "id": kind, **extra}), msg_id=kind)


@check("error too_many_rooms")
def check_too_many_rooms(probe: Probe) -> None:
    """a join over max_rooms: too_many_rooms; rooms already joined still work"""
    a = probe.connect("a")
    limit = a.limits["max_rooms"]
    if limit > MAX_PROVOKE:
        raise Skip(f"max_rooms is {limit}: too many joins to reach it")
    rooms = [probe.name("room") for _ in range(limit)]
    for room in rooms:
        a.request("joined", type="join", room=room)
    a.refused("too_many_rooms", json.dumps({"type": "join", "room": probe.name("room"), "id": 7}), msg_id=7)
    a.request("joined", type="join", room=rooms[0])  # one you are in: joined again, not refused


@check("error no_such_user")
def check_no_such_user(probe: Probe) -> None:
    """a dm to a nick nobody has: no_such_user"""
    a = probe.connect("a")
    a.refused("no_such_user", json.dumps({"type": "dm", "to": probe.name("nobody"), "text": "hi", "id": 8}), msg_id=8)


@check("error too_long")
def check_too_long(probe: Probe) -> None:
    """a text of max_text_chars is sent, one character more is too_long (chat and dm)"""
    room, (a,) = in_room(probe, 1)
    limit = a.limits["max_text_chars"]
    if 4 * (limit + 1) + 200 > a.limits["max_message_bytes"]:
        raise Skip(f"max_text_chars {limit} does not fit in max_message_bytes")
    a.request("chat", type="chat", room=room, text="\u00e9" * limit)  # characters, not bytes
    a.refused("too_long", json.dumps({"type": "chat", "room": room, "text": "x" * (limit + 1), "id": 9}), msg_id=9)
    a.refused("too_long", json.dumps({"type": "dm", "to": a.nick, "text": "x" * (limit + 1), "id": 10}), msg_id=10)


@check("error rate_limited")
def check_rate_limited(probe: Probe) -> None:
    """more than rate_burst requests at once: the extra ones get rate_limited, the connection stays"""
    a = probe.connect("a")
    burst, rate = a.limits["rate_burst"], a.limits["rate_per_second"]
    if burst + 3 > MAX_PROVOKE:
        raise Skip(f"rate_burst is {burst}: too many requests to reach it")
    for i in range(burst + 3):  # 3 over: well short of the flood close at 3 x burst refusals
        a.send_raw(json.dumps({"type": "ping", "id": i}), paced=False)
    replies = [a.reply_to(i, ("pong", "error")) for i in range(burst + 3)]
    fail_unless(all(r["type"] == "pong" for r in replies[:burst]), f"refused within the first {burst} (rate_burst)")
    refused = [r for r in replies if r["type"] == "error"]
    fail_unless(bool(refused), f"{burst + 3} requests at once, none refused")
    fail_unless(all(r["code"] == "rate_limited" for r in refused), f"refused with {refused[0]['code']}")
    time.sleep(min(1.5 / rate, 2.0))  # then the connection is still open: any reply will do
    a.send_raw(json.dumps({"type": "ping", "id": "after"}))
    a.reply_to("after", ("pong", "error"))


# -- room modes (an operator's token: --op-token) -------------------------------------------------


@check("mode")
def check_mode(probe: Probe) -> None:
    """mode: with neither field bad_message; from a non-operator forbidden, and the room is unchanged"""
    room, (a,) = in_room(probe, 1)
    a.refused("bad_message", json.dumps({"type": "mode", "room": room, "id": 11}), msg_id=11)
    a.refused("forbidden", json.dumps({"type": "mode", "room": room, "moderated": True, "id": 12}), msg_id=12)
    a.request("chat", type="chat", room=room, text="still open")


def moderated_room(probe: Probe, **mode) -> tuple:
    """The operator (not in the room) sets `mode` on a fresh room with one member, who sees the event."""
    op = probe.connect_op()
    room, (member,) = in_room(probe, 1)
    reply = op.request("mode", type="mode", room=room, **mode)
    fail_unless(all(reply.get(k) == v for k, v in mode.items()), f"the mode reply says {reply}, not {mode}")
    member.expect("mode", room=room, by=op.nick, **mode)
    return op, room, member


@check("error moderated")
def check_moderated(probe: Probe) -> None:
    """in a moderated room a member's chat is refused with moderated; lifted, it goes through"""
    op, room, member = moderated_room(probe, moderated=True)
    member.refused("moderated", json.dumps({"type": "chat", "room": room, "text": "may I?", "id": 13}), msg_id=13)
    op.request("mode", type="mode", room=room, moderated=False)
    member.expect("mode", room=room, moderated=False)
    member.request("chat", type="chat", room=room, text="thanks")


@check("error slow_mode")
def check_slow_mode(probe: Probe) -> None:
    """in slow mode a member's second chat at once is refused with slow_mode and retry_after >= 1"""
    op, room, member = moderated_room(probe, slow=600)
    member.request("chat", type="chat", room=room, text="first")
    refused = member.refused("slow_mode", json.dumps({"type": "chat", "room": room, "text": "second", "id": 14}),
                             msg_id=14)
    after = refused.get("retry_after")
    fail_unless(isinstance(after, int) and 1 <= after <= 600, f"slow_mode with retry_after {after!r}, not 1..600")
    op.request("mode", type="mode", room=room, slow=0)
