"""The fold of edit, delete and react events onto a chat (engines.base.amended) and the rules of
who may change which chat (rooms/edits.py): pure code, no sockets."""

import pytest

from chatserver import protocol
from chatserver.engines.base import amended, without_text
from chatserver.errors import ChatError
from chatserver.rooms import edits
from tests.helpers import EMOJI

CHAT = protocol.chat_event("lobby", "ann", "helo", 1, ts=1000.0)


def event(kind: str, nick: str = "ann", seq: int = 2, **fields) -> dict:
    """An edit, delete or react of CHAT (seq 1) at `seq`."""
    return protocol.amend_event(kind, "lobby", 1, nick, seq, ts=1000.0 + seq, **fields)


def react(nick: str, emoji: str, on: bool, seq: int = 2) -> dict:
    """`nick` reacts with `emoji` on CHAT (`on`), at `seq`."""
    return event("react", nick, seq, emoji=emoji, on=on)


def test_an_edit_sets_the_text_and_when():
    """An edit gives the chat its text and `edited` (the edit's ts); the rest stays."""
    assert amended(CHAT, event("edit", text="hello")) == {**CHAT, "text": "hello", "edited": 1002.0}


def test_a_delete_leaves_a_stub_without_text_edits_or_reactions():
    """A delete keeps only type, room, from, seq and ts, and says deleted."""
    chat = amended(amended(CHAT, event("edit", text="x")), react("bob", "👍", True, 3))
    assert amended(chat, event("delete", seq=4)) == {"type": "chat", "room": "lobby", "from": "ann", "seq": 1,
                                                     "ts": 1000.0, "deleted": True}


def test_nothing_changes_a_deleted_chat():
    """An edit or react applied after the delete (a race) returns the deleted chat itself."""
    deleted = amended(CHAT, event("delete"))
    for later in (event("edit", seq=3, text="too late"), react("bob", "👍", True, 4)):
        assert amended(deleted, later) is deleted


def test_react_on_and_off_are_absolute():
    """`on` sets whether the nick reacts: applying an event twice changes nothing more; an emoji
    nobody reacts with any more goes, and so does `reactions` when none is left."""
    once = amended(CHAT, react("bob", "👍", True))
    assert once["reactions"] == {"👍": ["bob"]}
    assert amended(once, react("bob", "👍", True, 3)) == once
    both = amended(once, react("carol", "👍", True, 3))
    assert both["reactions"] == {"👍": ["bob", "carol"]}
    assert amended(both, react("BOB", "👍", False, 4))["reactions"] == {"👍": ["carol"]}  # nicks compared folded
    assert "reactions" not in amended(once, react("bob", "👍", False, 4))


def test_reactions_stay_within_their_bounds():
    """No 21st emoji is added, and no 101st nick is listed for one emoji."""
    chat = CHAT
    for i, emoji in enumerate(EMOJI):
        chat = amended(chat, react("bob", emoji, True, 2 + i))
    assert list(chat["reactions"]) == list(EMOJI[: protocol.MAX_REACTIONS])
    for i in range(protocol.MAX_REACTORS + 5):
        chat = amended(chat, react(f"n{i}", EMOJI[0], True, 100 + i))
    assert len(chat["reactions"][EMOJI[0]]) == protocol.MAX_REACTORS


def test_an_edit_without_text():
    """without_text drops an edit's text only."""
    edit = event("edit", text="secret")
    assert without_text(edit) == {k: v for k, v in edit.items() if k != "text"}


def check(kind: str, nick: str = "ann", chat=CHAT, rule=0, operator=False, now=1010.0, window=900.0, **fields):
    """edits.check for chat seq 1 of lobby, by default CHAT by ann, 10 s after it was sent."""
    return edits.check(kind, "lobby", 1, chat, nick, rule, operator, window, now=now, **fields)


def code(call) -> str:
    """The code of the ChatError `call()` raises."""
    with pytest.raises(ChatError) as refused:
        call()
    return refused.value.code


def test_edit_rules():
    """Own chats only (nicks compared folded), within the window; muted: forbidden; moderated: moderated."""
    assert check("edit", nick="ANN", text="hello")["text"] == "hello"
    assert code(lambda: check("edit", nick="bob", text="x")) == "forbidden"
    assert code(lambda: check("edit", now=1901.0, text="x")) == "too_late"
    assert code(lambda: check("edit", rule=ChatError("forbidden", "muted"), text="x")) == "forbidden"
    assert code(lambda: check("edit", rule=ChatError("moderated", "m"), text="x")) == "moderated"


def test_delete_rules():
    """Own chat within the window, muted or not; an operator any chat at any time."""
    assert check("delete", rule=ChatError("forbidden", "muted"))["type"] == "delete"
    assert code(lambda: check("delete", nick="bob")) == "forbidden"
    assert code(lambda: check("delete", now=1901.0)) == "too_late"
    assert check("delete", nick="op", operator=True, now=10**9)["from"] == "op"


def test_react_rules():
    """react toggles against the chat as read; a new 21st emoji is refused, one it has is not;
    muted: forbidden; moderated rooms allow it."""
    assert check("react", nick="bob", emoji="👍")["on"] is True
    reacted = amended(CHAT, react("bob", "👍", True))
    assert check("react", nick="Bob", chat=reacted, emoji="👍")["on"] is False
    full = CHAT
    for i, emoji in enumerate(EMOJI[:20]):
        full = amended(full, react("carol", emoji, True, 2 + i))
    assert code(lambda: check("react", nick="bob", chat=full, emoji=EMOJI[20])) == "too_many_reactions"
    assert check("react", nick="bob", chat=full, emoji=EMOJI[0])["on"] is True
    assert code(lambda: check("react", rule=ChatError("forbidden", "muted"), emoji="👍")) == "forbidden"
    assert check("react", rule=ChatError("moderated", "m"), emoji="👍")["on"] is True


def test_the_target_must_be_a_chat_that_is_kept():
    """No event, a non-chat event, or a deleted chat: no_such_message, for every kind."""
    deleted = amended(CHAT, event("delete"))
    for target in (None, event("edit", text="x"), deleted):
        for kind, fields in (("edit", {"text": "x"}), ("delete", {}), ("react", {"emoji": "👍"})):
            assert code(lambda k=kind, f=fields, t=target: check(k, chat=t, **f)) == "no_such_message"


def test_fields():
    """seq: 1 to MAX_SEQ; emoji: one emoji (flags and skin tones included), else bad_message."""
    assert protocol.require_seq({"seq": 1}) == 1
    for bad in (0, -1, True, "1", None, protocol.MAX_SEQ + 1):
        assert code(lambda b=bad: protocol.require_seq({"seq": b})) == "bad_message"
    for good in ("👍", "👍🏽", "🇫🇷", "❤️", "👨‍👩‍👧"):
        assert protocol.require_emoji({"emoji": good}) == good
    for bad in ("", "a", "👍👍", ":+1:", "👍 ", 5, None, "👍" * 40):
        assert code(lambda b=bad: protocol.require_emoji({"emoji": b})) == "bad_message"
