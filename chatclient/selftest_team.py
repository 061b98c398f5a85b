"""The selftest's checks of a team's requests (PROTOCOL.md): edit, delete, react, typing, mark,
search, and direct messages that wait. Registered after the checks of selftest_checks.py, in the
order below. A server that cannot search answers `unsupported` (roomchat on Redis did, before it
searched there): that check is then skipped, saying so, which PROTOCOL.md allows.
"""

import json

from chatclient.selftest_checks import check, fail_unless, in_room
from chatclient.selftest_client import CheckFailed, Probe, Skip

# 21 distinct emoji: one more than a message may carry (MAX_REACTIONS, PROTOCOL.md)
EMOJI = [chr(0x1F600 + i) for i in range(21)]  # 😀 ... 😔


def posted(conn, room: str, text: str) -> dict:
    """`conn`'s chat `text` in `room`, as the server acknowledged it."""
    return conn.request("chat", type="chat", room=room, text=text)


def history_item(conn, room: str, seq: int) -> dict:
    """The history item with `seq` (the newest 50 of the room)."""
    items = conn.request("history", type="history", room=room)["messages"]
    found = [m for m in items if m["seq"] == seq]
    fail_unless(len(found) == 1, f"history has {len(found)} items with seq {seq}")
    return found[0]


def refuse(conn, code: str, msg_id: str, **msg) -> dict:
    return conn.refused(code, json.dumps({**msg, "id": msg_id}), msg_id=msg_id)


@check("edit")
def check_edit(probe: Probe) -> None:
    """edit: a stored event with the next seq for every member; history gives the new text and `edited`"""
    room, (a, b) = in_room(probe, 2)
    chat = posted(a, room, "frist")
    b.expect("chat", room=room, seq=chat["seq"])
    edit = a.request("edit", type="edit", room=room, seq=chat["seq"], text="first")
    fail_unless((edit["target"], edit["from"], edit["text"], edit["seq"]) == (chat["seq"], a.nick, "first",
                                                                             chat["seq"] + 1), f"the edit: {edit}")
    theirs = b.expect("edit", room=room, seq=edit["seq"])
    fail_unless("id" not in theirs and theirs["text"] == "first", f"a member's copy of the edit: {theirs}")
    refuse(b, "forbidden", "not-yours", type="edit", room=room, seq=chat["seq"], text="mine now")
    item = history_item(a, room, chat["seq"])
    fail_unless(item.get("text") == "first" and isinstance(item.get("edited"), int | float),
                f"history gives the edited chat as {item}")
    fail_unless(history_item(a, room, edit["seq"])["type"] == "edit", "history does not hold the edit event")


@check("delete")
def check_delete(probe: Probe) -> None:
    """delete: own chats only; history then gives deleted: true without text; the chat is no_such_message"""
    room, (a, b) = in_room(probe, 2)
    chat = posted(a, room, "oops, wrong room")
    refuse(b, "forbidden", "not-yours", type="delete", room=room, seq=chat["seq"])
    gone = a.request("delete", type="delete", room=room, seq=chat["seq"])
    fail_unless((gone["target"], gone["from"]) == (chat["seq"], a.nick), f"the delete: {gone}")
    b.expect("delete", room=room, seq=gone["seq"], target=chat["seq"])
    item = history_item(b, room, chat["seq"])
    fail_unless(item.get("deleted") is True and "text" not in item, f"history gives the deleted chat as {item}")
    refuse(a, "no_such_message", "again", type="edit", room=room, seq=chat["seq"], text="back?")
    refuse(a, "no_such_message", "never", type="react", room=room, seq=gone["seq"] + 50, emoji="👍")


@check("react")
def check_react(probe: Probe) -> None:
    """react toggles (on, then off) for every member; history lists who reacted; text is bad_message"""
    room, (a, b) = in_room(probe, 2)
    chat = posted(a, room, "lunch?")
    on = b.request("react", type="react", room=room, seq=chat["seq"], emoji="👍")
    fail_unless((on["target"], on["from"], on["emoji"], on["on"]) == (chat["seq"], b.nick, "👍", True),
                f"the first react: {on}")
    a.expect("react", room=room, seq=on["seq"], on=True)
    fail_unless(history_item(a, room, chat["seq"]).get("reactions") == {"👍": [b.nick]}, "history's reactions")
    off = b.request("react", type="react", room=room, seq=chat["seq"], emoji="👍")
    fail_unless(off["on"] is False and off["seq"] == on["seq"] + 1, f"the second react (a toggle): {off}")
    a.expect("react", room=room, seq=off["seq"], on=False)
    fail_unless(not history_item(a, room, chat["seq"]).get("reactions"), "reactions left after taking it back")
    refuse(b, "bad_message", "words", type="react", room=room, seq=chat["seq"], emoji="yes")


@check("error too_many_reactions")
def check_too_many_reactions(probe: Probe) -> None:
    """20 distinct emoji on one chat are kept; a 21st is too_many_reactions"""
    room, (a,) = in_room(probe, 1)
    chat = posted(a, room, "vote")
    for emoji in EMOJI[:-1]:
        a.request("react", type="react", room=room, seq=chat["seq"], emoji=emoji)
    refuse(a, "too_many_reactions", "one-more", type="react", room=room, seq=chat["seq"], emoji=EMOJI[-1])


@check("typing")
def check_typing(probe: Probe) -> None:
    """typing reaches the other members with the nick, not the typist; outside the room not_in_room"""
    room, (a, b, c) = in_room(probe, 3)
    a.send(type="typing", room=room)
    for other in (b, c):
        other.expect("typing", room=room, nick=a.nick)
    a.request("pong", type="ping")  # anything a's typing sent to a would be queued before this pong
    fail_unless(not [e for e in a.pending if e["type"] == "typing"], "the typist got its own typing event")
    outsider = probe.connect("outsider")
    refuse(outsider, "not_in_room", "typing", type="typing", room=room)


@check("mark")
def check_mark(probe: Probe) -> None:
    """mark: the reply is the mark, which never goes back and stops at the room's last seq"""
    room, (a,) = in_room(probe, 1)
    seqs = [posted(a, room, f"m{i}")["seq"] for i in range(3)]
    for asked, expected in ((seqs[1], seqs[1]), (seqs[0], seqs[1]), (seqs[2] + 100, seqs[2])):
        reply = a.request("mark", type="mark", room=room, seq=asked)
        fail_unless((reply["room"], reply["seq"]) == (room, expected), f"mark {asked}: the reply says {reply}")
    refuse(probe.connect("outsider"), "not_in_room", "mark", type="mark", room=room, seq=1)


@check("mark on another device")
def check_mark_identity(probe: Probe) -> None:
    """a token's marks: its next connection gets welcome.marks and joined.mark for the room"""
    url = probe.identity_url()
    room = probe.name("room")
    first = probe.connect_url(url, "first device")
    first.request("joined", type="join", room=room)
    seq = posted(first, room, "read up to here")["seq"]
    first.request("mark", type="mark", room=room, seq=seq)
    first.close()
    second = probe.connect_url(url, "second device")
    marks = second.welcome.get("marks") or {}
    fail_unless(marks.get(room) == seq, f"welcome.marks says {marks.get(room)!r} for the room, expected {seq}")
    joined = second.request("joined", type="join", room=room)
    fail_unless(joined.get("mark") == seq, f"joined.mark is {joined.get('mark')!r}, expected {seq}")


@check("search")
def check_search(probe: Probe) -> None:
    """search: words as prefixes, any case, all must match; newest first; paged with before; edits count"""
    room, (a,) = in_room(probe, 1)
    first = a.request(("search", "error"), type="search", room=room, q="anything")
    if first["type"] == "error":
        if first["code"] != "unsupported":
            raise CheckFailed(f"search refused with {first['code']} ({first.get('message')!r})")
        raise Skip(f"this server cannot search (unsupported: {first.get('message')}), as PROTOCOL.md allows")
    one, two = posted(a, room, "Deploy on Friday"), posted(a, room, "the deployment is green")
    gone = posted(a, room, "deploy secrets here")
    a.request("delete", type="delete", room=room, seq=gone["seq"])
    seqs = lambda reply: [m["seq"] for m in reply["messages"]]  # noqa: E731
    found = a.request("search", type="search", room=room, q="DEPLOY")
    fail_unless(seqs(found) == [two["seq"], one["seq"]], f"'DEPLOY' found seqs {seqs(found)}, expected newest first")
    both = a.request("search", type="search", room=room, q="deploy fri")
    fail_unless(seqs(both) == [one["seq"]], f"'deploy fri' found {seqs(both)}, expected only {one['seq']}")
    page = a.request("search", type="search", room=room, q="deploy", limit=1)
    older = a.request("search", type="search", room=room, q="deploy", limit=1, before=seqs(page)[0])
    fail_unless(seqs(page) + seqs(older) == [two["seq"], one["seq"]], "paging with before and limit")
    a.request("edit", type="edit", room=room, seq=one["seq"], text="release on Friday")
    fail_unless(seqs(a.request("search", type="search", room=room, q="release")) == [one["seq"]],
                "an edited chat is not found by its new text")
    refuse(a, "bad_message", "empty", type="search", room=room, q="")


@check("dm stored")
def check_dm_stored(probe: Probe) -> None:
    """a dm to an offline token holder is stored (stored: true) and comes after its next welcome"""
    url = probe.identity_url()
    room = probe.name("room")
    holder = probe.connect_url(url, "token holder")
    nick = holder.nick
    holder.request("joined", type="join", room=room)
    sender = probe.connect("sender")
    sender.request("joined", type="join", room=room)
    holder.expect("presence", room=room, event="join", nick=sender.nick)
    holder.close()
    sender.expect("presence", room=room, event="leave", nick=nick)
    copy = sender.request(("dm", "error"), type="dm", to=nick, text="see this when you are back")
    if copy["type"] == "error":
        if copy["code"] == "no_such_user":
            raise Skip("this server keeps no direct messages for offline token holders (--offline-dms 0)")
        raise CheckFailed(f"dm to an offline token holder refused with {copy['code']}")
    fail_unless(copy.get("stored") is True, f"the sender's copy does not say stored: {copy}")
    back = probe.connect_url(url, "token holder again")
    got = back.recv("the stored dm")
    while got["type"] != "dm" or got.get("text") != copy["text"]:  # others may wait for this nick too
        got = back.recv("the stored dm")
    fail_unless(got.get("stored") is True and got["from"] == sender.nick and got.get("ts") == copy.get("ts"),
                f"the stored dm came as {got}")

