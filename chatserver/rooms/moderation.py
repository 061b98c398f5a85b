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
- `mode`: `moderated` (only operators chat: others get `moderated`) and `slow` (seconds a member
  waits between its chats in the room: sooner gets `slow_mode` with `retry_after`); operators
  are exempt from both. Either alone changes only itself; the event carries both.

A ban or mute binds the target's connection as well as its nick (`bind`, called by the hub where
the event is delivered, on the process that holds the connection): renaming does not escape it,
and a member cannot take a nick banned from a room it is in (`check_nick`). A token holder cannot
rename at all, so its token is bound through its nick. Slow mode counts per connection and room
(`pace`, on the connection's own thread), so it too survives a rename.

Where a kick or ban is delivered (rooms/registry.py), the registry takes its target out of the room if it is a
local member and, if the event took a member out of the room (with several processes, as the
engine found when it stored it: `Meta.removed`), gives the others a presence `leave` right
after: on every process, at the same place in the stream. The rules are read from the engine
when they apply: bans at join, mutes at chat. A chat is published with the mode it was let
through under (`ChatRule.mode`): on Redis the write checks that mode and the sender's mute
again, so a mute or mode stored in between refuses it (RulesChanged) rather than letting it
follow. Nicks are compared folded (protocol.fold_nick), like everywhere else.
"""

import math
import time
from typing import NamedTuple

from chatserver.errors import ChatError
from chatserver.protocol import fold_nick

KINDS = ("topic", "kick", "ban", "mute", "mode")


class ChatRule(NamedTuple):
    """A connection's chats in a room are let through: `slow`, the seconds of slow mode that
    apply to them (0: none, or an operator); `mode`, the room's (moderated, slow) as read."""

    slow: int
    mode: tuple


class Action(NamedTuple):
    """A checked moderation request: `kind` (KINDS), `room`, `nick` (the target; None for a
    topic or mode), `text` (the topic, or the reason), `duration` (seconds, ban and mute),
    `moderated` and `slow` (a mode's; None: unchanged)."""

    kind: str
    room: str
    nick: str | None = None
    text: str = ""
    duration: int = 0
    moderated: bool | None = None
    slow: int | None = None


def removes_member(event: dict) -> bool:
    """True for an event that takes its `nick` out of the room: a kick, or a ban that is not a lift."""
    return event["type"] == "kick" or (event["type"] == "ban" and event["duration"] > 0)


def bind(holder, clients, event: dict, clock=time.time) -> None:
    """A ban or mute `event` was delivered: hold `holder` (the connection with its nick, or None)
    to it for its duration whatever nick it takes later. A lift (duration 0) frees the holder and
    every one of `clients` bound under that nick (renamed since). Hub lock held."""
    if event["type"] not in ("ban", "mute"):
        return
    key, folded = (event["room"], event["type"]), fold_nick(event["nick"])
    if event["duration"] > 0:
        if holder is not None:
            holder.bound[key] = (clock() + event["duration"], folded)
        return
    for client in clients:
        bound = client.bound.get(key)
        if client is holder or (bound is not None and bound[1] == folded):
            client.bound.pop(key, None)


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

    def check_join(self, identity, nick: str, room: str, client=None) -> None:
        """Raises ChatError forbidden when the token's (or invite's) `rooms` leave `room` out, or
        `nick` (or the connection, `client`) is banned from it."""
        if identity is not None and not identity.may_enter(room):
            what = "invite" if hasattr(identity, "uses") else "token"
            raise ChatError("forbidden", f"Your {what} does not let you join {room!r}.")
        self._check(room, "ban", nick, "You are banned from", client)

    def chat_rule(self, client, room: str, fresh: bool = False) -> ChatError | ChatRule:
        """What applies to `client`'s chats in `room` now: the refusal (forbidden when it is
        muted, by nick or connection; moderated), else the ChatRule they go under; `fresh`: read
        now, not kept from before (Engine.chat_rules). Raises Unavailable."""
        try:
            until, mode = self._engine.chat_rules(room, client.nick, fresh)  # one look (Redis: one round trip, or none)
            self._refuse(room, "mute", until, "You are muted in", client)
            if self.is_operator(client.identity, room):
                return ChatRule(0, mode)
        except ChatError as exc:
            return exc
        if mode[0]:
            return ChatError("moderated", f"{room!r} is moderated: only operators may chat there now.")
        return ChatRule(mode[1], mode)

    def pace(self, client, room: str, slow: int, clock=time.monotonic) -> None:
        """A chat of `client` to `room` under slow mode (`slow` seconds, 0: off) is let through
        and counted, or Raises ChatError slow_mode with `retry_after` (whole seconds, at least 1).
        The client's own thread only."""
        now = clock()
        if slow:
            left = client.last_chat.get(room, -math.inf) + slow - now
            if left > 0:
                raise ChatError("slow_mode", f"{room!r} is in slow mode: wait {for_how_long(left)[4:]}.",
                                retry_after=max(1, math.ceil(left)))
        client.last_chat[room] = now

    def check_nick(self, nick: str, rooms) -> None:
        """Raises ChatError forbidden when `nick` is banned from one of `rooms` (those the
        connection taking it is in: IRC's ERR_BANONCHAN). Raises Unavailable."""
        for room in sorted(rooms):
            if self._engine.restricted_until(room, "ban", nick) is not None:
                raise ChatError("forbidden", f"The nick {nick!r} is banned from {room!r}, which you are in.")

    def is_operator(self, identity, room: str) -> bool:
        return identity is not None and identity.op and identity.may_enter(room)

    def _check(self, room: str, kind: str, nick: str, saying: str, client=None) -> None:
        self._refuse(room, kind, self._engine.restricted_until(room, kind, nick), saying, client)

    def _refuse(self, room: str, kind: str, until: float | None, saying: str, client=None) -> None:
        """Raises ChatError forbidden while `until` (the engine's) or the connection's own bound
        (`client.bound`) is ahead."""
        bound = None if client is None else client.bound.get((room, kind))
        if bound is not None and bound[0] > self._clock():
            until = max(until or 0, bound[0])
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
        if kind == "mode":
            moderated, slow = self._engine.mode(room)
            moderated = moderated if action.moderated is None else action.moderated
            slow = slow if action.slow is None else action.slow
            self._engine.set_mode(room, moderated, slow)
            return {"type": "mode", "room": room, "moderated": moderated, "slow": slow, "by": actor}
        event = {"type": kind, "room": room, "nick": target, "by": actor, "reason": action.text}
        if kind in ("ban", "mute"):
            self._engine.restrict(room, kind, target, self._clock() + action.duration)
            event["duration"] = action.duration
        return event
