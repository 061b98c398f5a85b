"""DMs that wait (PROTOCOL.md, DMs that wait): a DM to a token holder who is offline is kept.

A `dm` to a nick nobody is connected as (on any process) is refused `no_such_user`, unless a
token reserves that nick (engine.reserved_until: the nick of a token the server has seen, not
expired) and `--offline-dms` is more than 0: then the engine keeps it for that identity (the
folded nick), at most `--offline-dms` of them (past it: `recipient_busy`). The sender's copy is
the DM plus `"stored": true`. The recipient's next connection with a token for that nick (on any
process) gets them right after its `welcome` (or its `auth` reply), oldest first, each with its
original `ts` and `"stored": true`; the engine hands each out once. One kept as its recipient
connects (on any process) reaches that connection, after its `welcome` (Registry.dm).

No lock of its own: runs on connection threads without the Registry lock (it calls the
engine). Methods Raise Unavailable when the engine cannot do it.
"""

from chatserver.errors import ChatError
from chatserver.protocol import fold_nick


class Mailbox:
    """DMs kept for offline token holders, over an engine (keep_dm, take_dms, reserved_until).
    `most`: `--offline-dms`, DMs kept per recipient (0: off)."""

    def __init__(self, engine, most: int):
        self._engine = engine
        self.most = most

    def keep(self, nick: str, event: dict, refusal: ChatError) -> dict:
        """Keep DM `event` for `nick`, whom nobody is connected as: the sender's copy (with
        `stored`). Raises `refusal` (no_such_user) when no token reserves `nick` or this is off,
        ChatError recipient_busy when `most` wait already."""
        if not self.most or self._engine.reserved_until(nick) is None:
            raise refusal
        event = {**event, "stored": True}
        if not self._engine.keep_dm(fold_nick(nick), event, self.most):
            raise ChatError("recipient_busy", f"{nick} is offline and has {self.most} messages waiting already; "
                                              "try again once they have read them.")
        return event

    def take(self, identity) -> list:
        """The DMs waiting for `identity` (a token's Identity; None: []), oldest first, now no
        longer kept."""
        if identity is None or not self.most:
            return []
        return self._engine.take_dms(fold_nick(identity.nick))

    def put_back(self, identity, events: list) -> None:
        """Keep again DMs taken for a connection that went away before they were sent (beyond
        `most`: they were kept once already)."""
        for event in events:
            self._engine.keep_dm(fold_nick(identity.nick), event, self.most + len(events))
