"""Moderation: what operators may do to a room, and the rules they set (PROTOCOL.md, Moderation).

Operators are connections whose token has the `op` claim (rooms/identity.py); a token with a `rooms`
claim is an operator in those rooms only. Their four requests are each answered with the event
they put into the room's stream through `engine.announce`, so members see who did what, in the
same order as the chats, on every engine and process:

- `topic`: set (or clear) the room's topic; the engine keeps it, `joined` shows it.
- `kick`: take a member out of the room; it gets the `kick` event and then nothing more of it.
- `ban`: keep a nick (so also a token's subject) out of the room for `duration` seconds, and
  take it out if it is in; 0 lifts a ban.
- `mute`: the nick may still read the room, but not chat in it, for `duration` seconds; 0 lifts it.

Where a kick or ban is delivered (rooms/registry.py), the registry takes its target out of the room if it is a
local member and gives the others a presence `leave` right after: on every process, at the same
place in the stream. The rules are read from the engine when they apply: bans at join, mutes
at chat. Nicks are compared folded (protocol.fold_nick), like everywhere else.
"""

import math
import time
from typing import NamedTuple

from chatserver.errors import ChatError

KINDS = ("topic", "kick", "ban", "mute")


class Action(NamedTuple):
    """A checked moderation request: `kind` (KINDS), `room`, `nick` (the target; None for a
    topic), `text` (the topic, or the reason), `duration` (seconds, ban and mute)."""

    kind: str
    room: str
    nick: str | None = None
    text: str = ""
    duration: int = 0


def removes_member(event: dict) -> bool:
    """True for an event that takes its `nick` out of the room: a kick, or a ban that is not a lift."""
    return event["type"] == "kick" or (event["type"] == "ban" and event["duration"] > 0)


def for_how_long(seconds: float) -> str:
    """A remaining time for people: "for 40 more seconds", "for 9 more minutes", ..."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            return f"for {math.ceil(seconds / size)} more {unit}s"
    return f"for {math.ceil(seconds)} more seconds"


class Moderation:
    """The rules of moderation over an engine (which keeps topics, bans and mutes). Methods
    take no lock and may be called from any connection thread; each Raises Unavailable when the
    engine cannot be read or written."""

    def __init__(self, engine, clock=time.time):
        self._engine = engine
        self._clock = clock

    def check_operator(self, identity, room: str) -> None:
        """Raises ChatError forbidden unless `identity` is an operator for `room`."""
        if identity is None or not identity.op:
            raise ChatError("forbidden", "Only operators may do that: it needs a token with the op claim.")
        if not identity.may_enter(room):
            raise ChatError("forbidden", f"Your token does not cover room {room!r}.")

    def check_join(self, identity, nick: str, room: str) -> None:
        """Raises ChatError forbidden when the token's `rooms` leave `room` out, or `nick` is banned from it."""
        if identity is not None and not identity.may_enter(room):
            raise ChatError("forbidden", f"Your token does not let you join {room!r}.")
        self._check(room, "ban", nick, "You are banned from")

    def check_chat(self, nick: str, room: str) -> None:
        """Raises ChatError forbidden when `nick` is muted in `room`."""
        self._check(room, "mute", nick, "You are muted in")

    def _check(self, room: str, kind: str, nick: str, saying: str) -> None:
        until = self._engine.restricted_until(room, kind, nick)
        if until is not None:
            left = until - self._clock()
            raise ChatError("forbidden", f"{saying} {room!r} {for_how_long(left)}.", retry_after=math.ceil(left))

    def apply(self, action: Action, actor: str, target: str | None) -> dict:
        """Store what `action` changes and return its event. `target`: the nick as its holder spells
        it (a kick's must be a member), else as the operator wrote it."""
        room, kind = action.room, action.kind
        if kind == "topic":
            self._engine.set_topic(room, action.text)
            return {"type": "topic", "room": room, "topic": action.text, "by": actor}
        event = {"type": kind, "room": room, "nick": target, "by": actor, "reason": action.text}
        if kind in ("ban", "mute"):
            self._engine.restrict(room, kind, target, self._clock() + action.duration)
            event["duration"] = action.duration
        return event
