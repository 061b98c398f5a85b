"""Connections and their nicks: connecting, disconnecting, and who has which nick (a step of
the chain rooms/hub.py -> rooms/connections.py -> rooms/registry.py; rooms/hub.py holds the state and its lock).

A new connection gets a free `guest-N`, or, with a token (rooms/identity.py), the token's nick. That
nick is reserved in the engine until the token expires, so nobody else takes it, also while its
holder is offline; and whoever has it when the holder arrives lets go (`evict`): an older
connection of the same holder is closed with 4002, anyone else is renamed to a guest nick. In
a cluster, the holder's process asks the other through the engine (`take_nick`).

Nicks are compared folded (protocol.fold_nick): look-alikes are one nick. With a cluster
engine a nick is also claimed in the engine, cluster-wide, before it is used here.
"""

import itertools
import logging
import secrets
import uuid

from chatserver import protocol
from chatserver.engines.base import Meta, Unavailable
from chatserver.errors import ChatError
from chatserver.ops import logs, trace
from chatserver.protocol import fold_nick
from chatserver.rooms.client import Client
from chatserver.rooms.hub import Hub, unavailable
from chatserver.rooms.identity import CLOSE_REPLACED, Identities

TAKE_TIMEOUT = 8.0  # seconds a token holder waits for its nick (a dead process's claim expires within 5 + 1)

log = logging.getLogger("roomchat.registry")


class Connections(Hub):
    """Clients coming and going, and their nicks. The Registry (a subclass) adds the requests."""

    def __init__(self, engine, limits: dict, identities: Identities | None = None, metrics=None):
        super().__init__(engine, metrics)
        self._engine = engine
        self._cluster = engine.cluster
        self._limits = limits
        self._identities = identities or Identities(None)
        self._ids = itertools.count(1)
        self._guests = 0

    def connect(self, conn, limiter, identity=None, resume: str | None = None) -> Client:
        """Register a new connection and send its `welcome` (with a new resume token): under a
        free guest nick or, with an identity (a verified token), under the token's nick, reserved
        for it until the token expires and taken from whoever has it.

        A connection presenting the `resume` token of a client of this process that is still here
        takes that client over: same nick, same rooms, no presence flap; the client's old
        connection is closed with 4002. With an identity too, only a client of the same token
        nick is taken over, and it holds the new token from then on. Raises ChatError unavailable."""
        if identity is not None:
            self._ask_engine(lambda: self._engine.reserve_nick(identity.nick, identity.expires))
        with self._lock:
            resumed = self._resume(resume, conn, identity)
            if resumed is not None:
                self._welcome(resumed, resumed=True)
            client = resumed or Client(next(self._ids), conn, "", limiter, identity)
        if resumed is not None:
            if identity is not None:
                self._identities.watch(client, identity.expires)
            return client
        while True:
            nick = self._guest_nick(client) if identity is None else self._take(client, identity.nick)
            with self._lock:
                if self._nicks.setdefault(fold_nick(nick), client) is client:
                    client.nick = nick
                    self._clients[client.id] = client
                    self._welcome(client, resumed=False)
                    break
            if self._cluster:  # taken here meanwhile (by another connection of the same token)
                self._engine.release_nick(nick, self._owner(client))
        if identity is not None:
            self._identities.watch(client, identity.expires)
        return client

    def disconnect(self, client: Client, conn=None) -> None:
        """Forget a client; every room it was in gets a presence `leave`. Safe to call twice, from
        any thread (the second call finds it gone), and a no-op for `conn`, a connection the
        client was taken away from by a resume. Raises nothing."""
        with self._lock:
            if conn is not None and client.conn is not conn:
                return  # resumed on another connection: the client lives on there
            if self._clients.pop(client.id, None) is None:
                return
            self._forget_token(client)
            del self._nicks[fold_nick(client.nick)]
            left = [self._remove_member(client, name) for name in sorted(client.rooms)]
            self._settled.notify_all()
        for name, emptied in left:
            self._announce_quietly(name, protocol.presence(name, "leave", client.nick), client)
            if emptied and self._cluster:
                self._engine.unsubscribe(name)
        if self._cluster:
            self._engine.release_nick(client.nick, self._owner(client))
        self._identities.forget(client)

    def evict(self, client_id: int) -> None:
        """Make a client let go of its nick for the holder of that nick's token (the engine calls
        this for a holder on another process). A connection with a token (for the same nick: an
        older connection of the same holder) is closed with 4002; an anonymous one is renamed to
        a guest nick, which it and its rooms see as a `nick` event."""
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            return
        if client.identity is not None:
            client.conn.close(CLOSE_REPLACED, "replaced by a newer connection with the same token")
            self.disconnect(client)
        else:
            self._rename(client, self._guest_nick(client), claimed=self._cluster)

    # -- helpers (lock held) -------------------------------------------------------------------

    def _welcome(self, client: Client, resumed: bool) -> None:
        """The first frame on a connection: `welcome`, with a new resume token for the client."""
        assert self._lock.locked()
        self._forget_token(client)
        client.token = secrets.token_urlsafe(24)
        self._tokens[client.token] = client
        event = protocol.welcome(client.nick, self._limits, self._engine.epoch)
        event["resume"] = client.token
        if resumed:
            event["resumed"] = True
            event["rooms"] = sorted(client.rooms)
        if client.identity is not None:
            event["auth"] = client.identity.summary()
        client.send(protocol.encode(event))

    def _resume(self, token: str | None, conn, identity=None) -> Client | None:
        """The client `token` names, moved onto `conn` (its old connection closed with 4002), or
        None when the token is unknown (never given, or its client is gone) or, with `identity`,
        the client is not that identity's holder (anonymous, or another token nick)."""
        assert self._lock.locked()
        client = self._tokens.get(token) if token else None
        if client is None or client.id not in self._clients:
            return None
        if identity is not None:
            if client.identity is None or fold_nick(client.identity.nick) != fold_nick(identity.nick):
                return None
            client.identity = identity  # the newer token: its expiry and claims from now on
        old, client.conn = client.conn, conn
        old.close(CLOSE_REPLACED, "replaced by a new connection")
        log.info("%s resumed on a new connection; the old one is closed with %d", client.nick, CLOSE_REPLACED,
                 extra=logs.context(peer=getattr(conn, "peer", None), nick=client.nick, code=CLOSE_REPLACED))
        return client

    def _forget_token(self, client: Client) -> None:
        assert self._lock.locked()
        if client.token is not None:
            self._tokens.pop(client.token, None)

    # -- helpers (lock not held) ---------------------------------------------------------------

    def _rename(self, client: Client, nick: str, reply_id=None, claimed: bool = False) -> None:
        """Give the client `nick` (claimed already in the cluster, with `claimed`); peers sharing a
        room hear of it once. Raises ChatError nick_taken, unavailable."""
        folded = fold_nick(nick)
        with self._lock:
            if not self._settle(client):
                return
            owner = self._nicks.get(folded)
            if owner is not None and owner is not client:
                raise nick_taken(nick)
            old = client.nick
        moving = self._cluster and folded != fold_nick(old)  # a claim in the engine changes hands
        if moving and not claimed and not self._claim(client, nick):
            raise nick_taken(nick)
        event = {"type": "nick", "old": old, "nick": nick}
        with self._lock:
            if client.id not in self._clients or self._nicks.get(folded, client) is not client:
                if moving:
                    self._engine.release_nick(nick, self._owner(client))
                if client.id in self._clients:
                    raise nick_taken(nick)
                return
            del self._nicks[fold_nick(old)]
            self._nicks[folded] = client
            client.nick = nick
            if trace.ON:
                trace.reply(client, event, len(protocol.encode(protocol.with_id(event, reply_id))))
            client.send(protocol.encode(protocol.with_id(event, reply_id)))
            log.info("nick %s -> %s", old, nick,  # the connect line named the guest nick
                     extra=logs.context(peer=getattr(client.conn, "peer", None), nick=nick))
            rooms = sorted(client.rooms)
        if moving:
            self._engine.release_nick(old, self._owner(client))
        change = uuid.uuid4().hex
        for name in rooms:
            self._announce_quietly(name, event, client, change)

    def _guest_nick(self, client: Client) -> str:
        """A free guest nick that is not reserved (claimed for `client` in a cluster).
        Raises ChatError unavailable."""
        while True:
            with self._lock:
                self._guests += 1
                nick = f"guest-{self._guests}" if not self._cluster else f"guest-{uuid.uuid4().hex[:6]}"
                if fold_nick(nick) in self._nicks:
                    continue
            if self._identities.is_reserved(nick) or self._reserved(nick):
                continue
            if not self._cluster or self._claim(client, nick):
                return nick

    def _take(self, client: Client, nick: str) -> str:
        """Free `nick` for `client`, which holds a token for it: whoever has it lets go (`evict`,
        on its own process). Returns the nick (claimed in a cluster). Raises ChatError unavailable."""
        if self._cluster:
            if not self._ask_engine(lambda: self._engine.take_nick(nick, self._owner(client), TAKE_TIMEOUT)):
                raise ChatError("unavailable", f"The nick {nick!r} is still held by another connection; try again.")
            return nick
        with self._lock:
            holder = self._nicks.get(fold_nick(nick))
        if holder is not None and holder is not client:
            self.evict(holder.id)
        return nick

    def _reserved(self, nick: str) -> bool:
        """True while a token reserves `nick` (or a look-alike). Raises ChatError unavailable."""
        return self._ask_engine(lambda: self._engine.reserved_until(nick)) is not None

    def _announce_quietly(self, name: str, event: dict, client: Client, change: str | None = None) -> None:
        """Announce presence or a nick change; applied here already, so a failure is only logged."""
        try:
            self._engine.announce(name, event, self._meta(client, change=change))
        except Unavailable as exc:
            log.warning("%s in %s not announced: %s", event["type"], name, exc,
                        extra=logs.context(nick=client.nick, room=name))

    def _ask_engine(self, read):
        try:
            return read()
        except Unavailable as exc:
            raise unavailable(exc) from None

    def _meta(self, client: Client, reply_id=None, change=None) -> Meta:
        return Meta(origin=(self.process_id, client.id), reply_id=reply_id, change=change)

    def _owner(self, client: Client) -> str:
        return f"{self.process_id}:{client.id}"

    def _claim(self, client: Client, nick: str) -> bool:
        return self._ask_engine(lambda: self._engine.claim_nick(nick, self._owner(client)))


def nick_taken(nick: str) -> ChatError:
    return ChatError("nick_taken", f"The nick {nick!r} is taken; choose another.")
