"""Typing notices (PROTOCOL.md, Typing): `nick` is typing in a room, to the room's other members.

Never stored, no seq: the engine puts it into the room's stream as it comes (`announce`; on
Redis a plain PUBLISH), so it reaches the members on every process. What it may cost is bounded
before the engine is asked anything: at most one per client (so per nick) and room every
TYPING_INTERVAL seconds, the rest dropped silently, after the request already took a token
from the connection's rate (the dispatcher's); so a client sending typing as fast as its rate
allows costs its room one frame per member per 3 s, and the server one dict lookup per extra
request. A notice from a muted member, in a moderated room from a non-operator, or in a room
with more than `--typing-max-members` members is dropped silently too (those ask the engine).
"""

import time

from chatserver.errors import ChatError
from chatserver.protocol import TYPING_INTERVAL


class Typing:
    """The rules of typing notices over a Moderation (mutes and modes). `max_members`:
    `--typing-max-members` (0: never sent)."""

    def __init__(self, moderation, max_members: int, clock=time.monotonic):
        self._moderation = moderation
        self.max_members = max_members
        self._clock = clock

    def due(self, client, room: str) -> bool:
        """True (and counted) when `client` sent no notice to `room` in the last TYPING_INTERVAL
        seconds. Registry lock held (`client.typed` is guarded by it)."""
        now = self._clock()
        typed = client.typed
        if now - typed.get(room, -TYPING_INTERVAL) < TYPING_INTERVAL or not self.max_members:
            return False
        if len(typed) >= 64:  # rooms left long ago: only the recent ones matter
            for name in [name for name, at in typed.items() if now - at >= TYPING_INTERVAL]:
                del typed[name]
        typed[room] = now
        return True

    def allowed(self, client, room: str, members) -> bool:
        """False when the notice is dropped: `client` is muted in `room`, the room is moderated
        and it is no operator there, or more than `max_members` are in the room (`members()`,
        asked last: it may go to the engine). Raises Unavailable."""
        if isinstance(self._moderation.chat_rule(client, room), ChatError):
            return False
        return members() <= self.max_members
