"""The teacher's room, pure parts: mode fields, slow-mode pacing, binding a connection to a ban or
mute, engine rows for modes and invite uses, invites signed and checked, transcripts rendered."""

import json
import time

import pytest

from chatclient.schema import validator
from chatserver import protocol
from chatserver.engines.base import transcript_order
from chatserver.engines.memory import MemoryEngine
from chatserver.errors import ChatError
from chatserver.ops import export, metrics
from chatserver.rooms import moderation
from chatserver.rooms.client import Client
from chatserver.rooms.identity import issue
from chatserver.rooms.invites import issue_invite, verify_invite
from chatserver.rooms.moderation import Moderation
from tests.helpers import SECRET

KEY = SECRET.encode()


@pytest.mark.parametrize("msg, expected", [
    ({"moderated": True}, (True, None)), ({"slow": 0}, (None, 0)), ({"moderated": False, "slow": 3600}, (False, 3600)),
])
def test_mode_fields_either_alone_or_both(msg, expected):
    """`moderated` and `slow` may come alone or together; absent means unchanged (None)."""
    assert protocol.require_mode(msg) == expected


@pytest.mark.parametrize("msg", [{}, {"moderated": 1}, {"slow": -1}, {"slow": protocol.MAX_SLOW + 1}, {"slow": 2.0},
                                 {"slow": False}, {"moderated": None, "slow": None}])
def test_bad_mode_fields_are_bad_message(msg):
    """Neither field, a non-boolean `moderated`, or `slow` outside whole seconds 0..MAX_SLOW: bad_message."""
    with pytest.raises(ChatError) as caught:
        protocol.require_mode(msg)
    assert caught.value.code == "bad_message"


def client() -> Client:
    return Client(1, None, "stud1", None)


def test_slow_mode_lets_one_chat_per_interval_and_says_when_with_whole_seconds():
    """A second chat within `slow` seconds gets slow_mode with retry_after rounded up (at least 1);
    at the interval's end it passes; slow 0 never refuses; rooms are counted apart."""
    rules, member, now = Moderation(MemoryEngine()), client(), [100.0]
    pace = lambda room, slow: rules.pace(member, room, slow, clock=lambda: now[0])  # noqa: E731
    pace("class", 10)
    now[0] += 9.99
    with pytest.raises(ChatError) as caught:
        pace("class", 10)
    assert (caught.value.code, caught.value.fields["retry_after"]) == ("slow_mode", 1)
    now[0] += 0.01
    pace("class", 10)
    pace("other", 10)
    for _ in range(3):
        pace("open", 0)


def test_a_ban_binds_its_holder_and_a_lift_frees_it_under_any_new_nick():
    """bind: a ban or mute holds the connection with that nick (until its end); a lift by the nick it was
    given for frees that connection after a rename, and leaves others' bindings alone."""
    holder, other = client(), Client(2, None, "stud2", None)
    moderation.bind(holder, [holder, other], {"type": "mute", "room": "class", "nick": "STUD1", "duration": 60},
                    clock=lambda: 1000.0)
    moderation.bind(other, [holder, other], {"type": "mute", "room": "class", "nick": "stud2", "duration": 60})
    assert holder.bound[("class", "mute")] == (1060.0, protocol.fold_nick("stud1"))
    holder.nick = "innocent"
    moderation.bind(None, [holder, other], {"type": "mute", "room": "class", "nick": "stud1", "duration": 0})
    assert holder.bound == {} and ("class", "mute") in other.bound
    moderation.bind(holder, [holder], {"type": "kick", "room": "class", "nick": "innocent"})  # not a rule
    assert holder.bound == {}


def test_engine_rows_for_mode_and_invite_uses():
    """The mode defaults to (False, 0) and goes back to no row; an invite's uses count to its limit and
    then refuse; an expired invite's count reads 0."""
    engine = MemoryEngine()
    assert engine.mode("class") == (False, 0)
    engine.set_mode("class", True, 30)
    assert engine.mode("class") == (True, 30)
    engine.set_mode("class", False, 0)
    assert engine.mode("class") == (False, 0) and ("class", "mode", "") not in engine._rules
    until = time.time() + 60
    assert [engine.use_invite("inv", 2, until) for _ in range(3)] == [1, 2, None]
    assert engine.invite_uses("inv") == 2
    engine.use_invite("old", 5, time.time() + 60)
    engine._clock = lambda: time.time() + 120
    assert engine.invite_uses("old") == 0


def test_invites_are_signed_and_checked():
    """An invite round-trips its claims; an expired one, one signed with another key, an identity token
    and garbage are bad_token with a reason in words; an identity check refuses an invite."""
    signed = issue_invite(KEY, ["class", "lobby"], 40, 3600, op=True)
    invite = verify_invite(KEY, signed)
    assert (invite.rooms, invite.uses, invite.op) == (frozenset({"class", "lobby"}), 40, True)
    assert invite.may_enter("class") and not invite.may_enter("other")
    for bad, says in ((issue_invite(KEY, None, 1, 10, now=time.time() - 100), "expired"),
                      (issue_invite(b"another-" + b"k" * 32, None, 1, 60), "not valid"),
                      (issue(KEY, "ann", 60), "not valid"), ("garbage", "not valid")):
        with pytest.raises(ChatError) as caught:
            verify_invite(KEY, bad)
        assert caught.value.code == "bad_token" and says in caught.value.message
    from chatserver.rooms.identity import verify

    with pytest.raises(ChatError):
        verify(KEY, signed)
    for uses in (0, 10001):
        with pytest.raises(ValueError):
            issue_invite(KEY, None, uses, 60)


def test_transcript_order_places_each_notice_after_the_chat_it_followed():
    """Notices go after the chat seq they followed, in their own order, before the next chat."""
    chats = [{"type": "chat", "seq": s} for s in (1, 2, 3)]
    notices = [(1, {"type": "topic", "n": 1}), (0, {"type": "mode"}), (1, {"type": "mute", "n": 2})]
    ordered = transcript_order(chats, notices)
    assert [(e["type"], e.get("seq", e.get("n"))) for e in ordered] == [
        ("mode", None), ("chat", 1), ("topic", 1), ("mute", 2), ("chat", 2), ("chat", 3)]


EVENTS = [
    {"type": "chat", "room": "class", "from": "ann", "text": "see *this* <b>\nline 2", "seq": 1, "ts": 0.0},
    {"type": "topic", "room": "class", "topic": "Exam", "by": "teacher", "ts": 60.0},
    {"type": "ban", "room": "class", "nick": "bob", "by": "teacher", "duration": 7200, "reason": "", "ts": 61.0},
    {"type": "mode", "room": "class", "moderated": True, "slow": 0, "by": "teacher", "ts": 62.0},
]


def test_transcripts_in_three_formats():
    """jsonl: one event per line as is; md: words, times in UTC, markdown escaped, lines kept; html: one
    page, every text escaped, nothing external."""
    lines = export.render("class", EVENTS, "jsonl").splitlines()
    assert [json.loads(line) for line in lines] == EVENTS
    md = export.render("class", EVENTS, "md")
    assert "- 1970-01-01 00:00:00 **ann**: see \\*this\\* \\<b\\>  \n    line 2" in md
    assert "_teacher set the topic to \"Exam\"_" in md and "teacher banned bob for 2 hours" in md
    assert "only operators may chat, slow mode off" in md
    page = export.render("class", EVENTS, "html")
    assert "see *this* &lt;b&gt;\nline 2" in page and "<b>ann</b>" in page and "<b>\n" not in page
    assert "<script" not in page and "http" not in page


@pytest.mark.parametrize("text, expected", [("2026-12-01", 1796083200.0), ("2026-12-01T09:30", 1796117400.0),
                                            ("2026-12-01T10:30+01:00", 1796117400.0)])
def test_since_is_a_day_or_a_time_in_utc(text, expected):
    """--since takes a day (its midnight, UTC) or an ISO time (UTC unless it says otherwise)."""
    assert export.parse_since(text) == expected


def test_mode_limits_and_labels_match_the_schema():
    """The schema's bound on `slow` is protocol.MAX_SLOW; metrics know every request type and error code."""
    requests, events = validator("requests").schema, validator("events").schema
    assert requests["$defs"]["mode"]["properties"]["slow"]["maximum"] == protocol.MAX_SLOW
    assert events["$defs"]["room_mode"]["properties"]["slow"]["maximum"] == protocol.MAX_SLOW
    assert set(metrics.REQUEST_TYPES) == set(requests["properties"]["type"]["enum"])
    assert set(metrics.ERROR_CODES) <= set(events["$defs"]["error_code"]["enum"])
    assert {"moderated", "slow_mode"} <= set(metrics.ERROR_CODES)
