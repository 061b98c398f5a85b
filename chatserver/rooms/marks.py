"""Read markers (PROTOCOL.md, Read markers): how far each reader has read each room.

A `mark` request sets one; it never goes back, and it is capped at the room's last seq (so a
client cannot mark what does not exist yet), and a room without history gets none. A connection
with a token keeps its marks in the engine under its identity (the token's folded nick): a new
connection of the same identity, on any process, finds them in `welcome.marks` and in
`joined.mark`. An anonymous connection keeps them for as long as it can be resumed, at most
MAX_MARKS: on one process on its Client (`marks`, forgotten with it); with a cluster engine
(Redis) with its resume session in the engine (`set_session_mark`), so a resume on any process
finds them in `joined.mark` as a resume on the same process does.

No lock of its own: the methods run on the client's connection thread, without the Registry
lock (they call the engine); a Client's `marks` is touched by that thread only. Each Raises
Unavailable when the engine cannot do it.
"""

import logging

from chatserver.engines.base import Unavailable
from chatserver.protocol import MAX_MARKS, fold_nick

log = logging.getLogger("roomchat.marks")


class Marks:
    """Read markers over an engine (engines.base.Engine's set_mark, marks, mark; a cluster
    engine's set_session_mark, session_mark)."""

    def __init__(self, engine):
        self._engine = engine
        self._with_session = engine.cluster  # an anonymous connection's marks go where its resume goes

    def set(self, client, identity, room: str, seq: int, last: int) -> int:
        """Mark `room` read up to `seq` (capped at `last`, the room's last seq here) for `client`
        (by its `identity`, or on the connection when None): the mark now."""
        seq = min(seq, last)
        if identity is None and not self._with_session:
            kept = client.marks
            seq = max(seq, kept.pop(room, 0))
            if seq > 0:
                kept[room] = seq  # to the end: marked last
                if len(kept) > MAX_MARKS:
                    del kept[next(iter(kept))]
            return seq
        if seq <= 0:  # a room without history: nothing to keep
            return self.of_room(client, identity, room) or 0
        if identity is None:
            return self._engine.set_session_mark(client.id, room, seq)
        return self._engine.set_mark(fold_nick(identity.nick), room, seq)

    def of_room(self, client, identity, room: str) -> int | None:
        """`client`'s mark in `room` (by `identity`, or on the connection), or None."""
        if identity is not None:
            return self._engine.mark(fold_nick(identity.nick), room)
        if self._with_session:
            return self._engine.session_mark(client.id, room)
        return client.marks.get(room)

    def welcome(self, identity) -> dict:
        """{room: seq} for `welcome.marks` of a new connection with `identity` (None: {}); the room
        marked last first. {} (logged) when the engine cannot say: the client only misses hints."""
        if identity is None:
            return {}
        try:
            return self._engine.marks(fold_nick(identity.nick))
        except Unavailable as exc:
            log.warning("read markers of %s not read: %s", identity.nick, exc)
            return {}
