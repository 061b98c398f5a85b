"""The requests: what each message type does to the hub's state (rooms/hub.py holds the state).

A request is applied at once, under the hub's lock. Only room events wait for the engine: a
chat is delivered when the engine hands it back stored, in the room's stream order; `announce`
puts presence and nick events into the same stream. A client's next request waits until its own
published chats are delivered (`_settle`), so its replies keep the order of its requests, and a
sender that outruns the disk is slowed down alone. Ping, who, rooms, dm, nick and leave never
wait for the disk. The engine is never called with the lock held.

Joining: the joiner becomes a member at once, with a `Hold`; events reach it only from its own
join's place in the stream (`Hold.at`, the room's seq there). Until `joined` is sent, events
after that place are held; `joined.history` is read from the engine up to that seq; then the
held events follow. So `joined` plus what follows is exactly the room's stream, with no gap and
no repeat, whichever engine and process.

Identity (rooms/identity.py): a connection with a token holds the token's nick, reserved for it in the
engine until the token expires; whoever has that nick lets go of it (`evict`). Moderation
(rooms/moderation.py): the rules live there and in the engine; `moderate` applies a request.
"""

import bisect
import logging
import threading
from typing import NamedTuple

from chatserver import protocol
from chatserver.engines.base import Meta, Unavailable
from chatserver.errors import ChatError
from chatserver.ops import logs, trace
from chatserver.protocol import fold_nick
from chatserver.rooms import budgets
from chatserver.rooms.client import Client
from chatserver.rooms.connections import Connections
from chatserver.rooms.hub import Hold, unavailable
from chatserver.rooms.identity import Identities
from chatserver.rooms.moderation import Moderation

JOIN_TIMEOUT = 10.0  # seconds a join waits for its place in the stream
REPLY_BUILDERS = 4  # history replies (joined, history) read and encoded at once
ROOM_ITEM_BYTES = len('{"room":"r","members":1},')  # the smallest entry of a `rooms` list

log = logging.getLogger("roomchat.registry")


class ChatRequest(NamedTuple):
    """One `chat` request as the handler checked it; `refused` is set when it was refused already."""

    room: str | None
    text: str | None
    reply_id: object = None
    refused: ChatError | None = None


class Registry(Connections):
    """Every request a client can make, as one method each (the handlers call them).
    Connecting and nicks: rooms/connections.py."""

    def __init__(self, engine, limits: dict, identities: Identities | None = None, metrics=None):
        super().__init__(engine, limits, identities, metrics)
        self._max_rooms = limits["max_rooms"]
        self._moderation = Moderation(engine)
        self._max_reply = limits["max_reply_bytes"]
        self._dm_backlog = limits["max_outbox_bytes"] // 2  # a recipient with more waiting is busy
        # Replies built from history at once: each holds up to about a reply's worth of rows and
        # bytes while it is built, so 600 clients asking together cost a few replies' memory.
        # Taken before the lock, never while holding it.
        self._builders = threading.BoundedSemaphore(REPLY_BUILDERS)
        engine.start(self)

    # -- requests ------------------------------------------------------------------------------

    def reply(self, client: Client, event: dict) -> None:
        """Send a direct reply (pong, error) after the client's earlier requests are answered."""
        frame = protocol.encode(event)
        self.metrics.error(event)
        if trace.ON:
            trace.reply(client, event, len(frame))
        self._reply_frame(client, frame)

    def _reply_frame(self, client: Client, frame: bytes) -> None:
        """Send an encoded reply after the client's earlier requests are answered."""
        with self._lock:
            if self._settle(client):
                client.send(frame, own=True)

    def set_nick(self, client: Client, nick: str, reply_id=None) -> None:
        """Take `nick`; peers sharing a room hear of it once. Raises ChatError nick_taken,
        nick_reserved (on the reserved list, or a token's), forbidden (your nick is your
        token's), unavailable."""
        with self._lock:
            identity = client.identity
        if identity is not None:
            if fold_nick(nick) != fold_nick(identity.nick):
                raise ChatError("forbidden", f"Your nick comes from your token: {identity.nick}.")
        elif self._identities.is_reserved(nick) or self._reserved(nick):
            raise ChatError("nick_reserved", f"The nick {nick!r} is reserved; choose another.")
        self._rename(client, nick, reply_id)

    def authenticate(self, client: Client, token: str, reply_id=None) -> None:
        """`auth`: make a verified token this connection's identity. An anonymous connection takes
        the token's nick (reserved for it from now on); an authenticated one renews its token (for
        the same nick only). Raises ChatError bad_token, forbidden, unavailable."""
        identity = self._identities.verify(token)
        with self._lock:
            previous, nick = client.identity, client.nick
            if previous is not None and fold_nick(previous.nick) != fold_nick(identity.nick):
                raise ChatError("forbidden", f"This connection is {previous.nick}; connect again to be someone else.")
            client.identity = identity
        try:
            self._ask_engine(lambda: self._engine.reserve_nick(identity.nick, identity.expires))
            if fold_nick(nick) != fold_nick(identity.nick):
                self._rename(client, self._take(client, identity.nick), claimed=self._cluster)
        except ChatError:
            with self._lock:
                client.identity = previous
            raise
        self._identities.watch(client, identity.expires)
        self.reply(client, protocol.with_id({"type": "auth", **identity.summary()}, reply_id))

    def join(self, client: Client, name: str, after: int | None = None, reply_id=None) -> None:
        """Enter a room (or re-enter one, without presence). `joined` carries the members and the
        last 50 chat events or, with `after`, every one with a higher seq, within 1000 events and
        `max_reply_bytes` (else `truncated`), and the topic. Raises ChatError forbidden (banned, or not in the token's
        rooms), too_many_rooms, unavailable."""
        with self._lock:
            identity, nick = client.identity, client.nick
        self._ask_engine(lambda: self._moderation.check_join(identity, nick, name))
        with self._lock:
            if not self._settle(client):
                return
            room = self._rooms.get(name)
            rejoin = room is not None and client in room.members
            if rejoin:  # its place in the stream is here and now
                hold = room.members[client] or Hold(self._seqs.get(name, 0), self._nicks_in(room))
                room.members[client] = hold
            else:
                if len(client.rooms) >= self._max_rooms:
                    raise ChatError("too_many_rooms", f"You are in {self._max_rooms} rooms; leave one first.")
                room = self._room(name)
                hold = room.members[client] = Hold()
                client.rooms.add(name)
            nick = client.nick
        if not rejoin:
            emptied = False
            try:
                if self._cluster:
                    self._engine.subscribe(name)
                self._engine.announce(name, protocol.presence(name, "join", nick), self._meta(client))
            except Unavailable as exc:
                with self._lock:
                    if room.members.get(client) is hold:
                        emptied = self._remove_member(client, name)[1]
                if self._cluster and emptied:
                    self._engine.unsubscribe(name)
                raise unavailable(exc) from None
        with self._lock:  # wait for our join's place in the stream (at once, but on Redis)
            if not self._settled.wait_for(lambda: hold.at is not None or room.members.get(client) is not hold,
                                          JOIN_TIMEOUT):
                log.warning("join of %s by %s not placed in %.0f s", name, client.nick, JOIN_TIMEOUT,
                            extra=logs.context(nick=client.nick, room=name))
                hold.at = self._seqs.get(name, 0)
        limit = protocol.JOIN_HISTORY if after is None else protocol.MAX_RESUME + 1
        with self._builders:
            try:
                history = self._engine.read(name, after=after, before=hold.at + 1, limit=limit,
                                            max_bytes=self._max_reply)
                members = self._engine.members(name) if self._cluster else hold.members
                topic = self._engine.topic(name)
                frame = self._joined(name, members, history, after is None, reply_id, topic)
            except Unavailable as exc:
                frame, history = None, exc
            with self._lock:
                if room.members.get(client) is not hold:
                    if client.id in self._clients:  # kicked or banned while joining: it had the event
                        refused = ChatError("forbidden", f"You were removed from {name!r} while joining.")
                        client.send(protocol.encode(protocol.error(refused, reply_id)), own=True)
                    return  # else disconnected meanwhile
                room.members[client] = None
                if frame is None:  # read failed after the join was placed: the join stands, say so
                    error = protocol.error(unavailable(history), reply_id)
                    self.metrics.error(error)
                    client.send(protocol.encode(error), own=True)
                    members, history = self._nicks_in(room), []
                    frame = self._joined(name, members, history, True, reply_id, "")
                self.metrics.deliveries.inc(len(hold.frames))  # room events held back until `joined`
                if trace.ON:
                    trace.reply(client, {"type": "joined", "members": members, "history": history, "room": name},
                                len(frame))
                client.send(frame, own=True)
                if hold.frames:  # the room's events since the join's place: others' traffic
                    client.send(b"".join(hold.frames))

    def leave(self, client: Client, name: str, reply_id=None) -> None:
        """Quit a room; the others see a presence `leave`. Raises ChatError not_in_room."""
        with self._lock:
            if not self._settle(client):
                return
            if name not in client.rooms:
                raise ChatError("not_in_room", f"You are not in {name!r}.")
            emptied = self._remove_member(client, name)[1]
            client.send(protocol.encode(protocol.with_id({"type": "left", "room": name}, reply_id)), own=True)
        self._announce_quietly(name, protocol.presence(name, "leave", client.nick), client)
        if emptied and self._cluster:
            self._engine.unsubscribe(name)

    def chat_many(self, client: Client, requests: list) -> None:
        """Chats from one client that arrived together ([ChatRequest]), answered in order: runs
        of chats to one room are published together (one write per member when delivered); an
        error reply waits until the chats before it are delivered. Refusals, each a reply in its
        place: the handler's own, not_in_room, forbidden (muted), unavailable."""
        run_room, run = None, []
        muted = {}  # room -> ChatError or None: read once per call and room
        for request in requests:
            try:
                if request.refused is not None:
                    raise request.refused
                if request.room not in muted:
                    muted[request.room] = self._refusal(self._moderation.check_chat, client.nick, request.room)
                if muted[request.room] is not None:
                    raise muted[request.room]
                with self._lock:
                    if client.id not in self._clients:
                        break
                    if request.room not in client.rooms:
                        raise ChatError("not_in_room", f"Join {request.room!r} before sending to it.")
                    client.pending += 1
                    nick = client.nick
                if run and request.room != run_room:
                    self._publish(run_room, run)
                    run = []
                run_room = request.room
                run.append((nick, request.text, self._meta(client, request.reply_id)))
            except ChatError as exc:
                if run:
                    self._publish(run_room, run)
                    run = []
                if logs.requests.isEnabledFor(logging.DEBUG):
                    logs.request(client, "chat", {"room": request.room}, exc.code)
                self.reply(client, protocol.error(exc, request.reply_id))
        if run:
            self._publish(run_room, run)

    def dm(self, client: Client, nick: str, text: str, reply_id=None) -> None:
        """A direct message to a connected nick. Raises ChatError no_such_user, unavailable."""
        with self._lock:
            if not self._settle(client):
                return
            target = self._nicks.get(fold_nick(nick))
            event = protocol.dm_event(client.nick, target.nick if target else nick, text)
            if target is None and not self._cluster:
                raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")
            if target is not None and target is not client:
                if target.backlog() > self._dm_backlog:
                    raise ChatError("recipient_busy", f"{target.nick} is not keeping up with what is sent to "
                                                      "them; try again later.")
                target.send(protocol.encode(event))
        if target is None:
            try:
                to = self._engine.send_dm(nick, event)
            except Unavailable as exc:
                raise unavailable(exc) from None
            if to is None:
                raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")
            event = {**event, "to": to}
        self.reply(client, protocol.with_id(event, reply_id))

    def list_rooms(self, client: Client, after: str | None = None, reply_id=None) -> None:
        """Rooms with members and their counts (all processes, with a cluster engine), by name,
        those after `after` only; `count` says how many there are in all, `truncated` that the
        list was cut to `max_reply_bytes`. Raises ChatError unavailable."""
        most = self._max_reply // ROOM_ITEM_BYTES + 1  # more could never fit in one reply
        if self._cluster:
            rooms = [(r["room"], r["members"]) for r in self._ask_engine(self._engine.rooms)]
            count, rooms = len(rooms), [r for r in rooms if after is None or r[0] > after][:most]
        else:
            with self._lock:  # names are kept sorted: only a slice of them under the lock
                start = 0 if after is None else bisect.bisect_right(self._names, after)
                names, count = self._names[start:start + most], len(self._names)
            # read without the lock (each dict read is atomic): a room that emptied meanwhile is
            # left out, and a count may include a join not yet placed in the stream
            rooms = [(n, len(r.members)) for n in names if (r := self._rooms.get(n)) is not None]
        reply = protocol.with_id({"type": "rooms", "count": count}, reply_id)
        items = [{"room": n, "members": m} for n, m in rooms]
        self._reply_frame(client, budgets.bounded_frame(reply, "rooms", items, self._max_reply)[0])

    def who(self, client: Client, name: str, reply_id=None) -> None:
        """The nicks in a room, in join order; [] for a room nobody is in. `count` says how many
        there are, `truncated` that the list was cut to `max_reply_bytes`. Raises ChatError unavailable."""
        if self._cluster:
            members = self._ask_engine(lambda: self._engine.members(name))
        else:
            with self._lock:
                room = self._rooms.get(name)
                members = self._nicks_in(room) if room else []
        reply = protocol.with_id({"type": "who", "room": name, "count": len(members)}, reply_id)
        self._reply_frame(client, budgets.bounded_frame(reply, "members", members, self._max_reply)[0])

    def history(self, client: Client, name: str, before=None, after=None, limit=50, reply_id=None) -> None:
        """Members page through a room's stored chat events, oldest first. Raises ChatError
        not_in_room, unavailable."""
        with self._lock:
            if not self._settle(client):
                return
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} to read its history.")
            # Stored but not yet delivered events stay out (a member gets those live, not twice):
            # read below them, so a page is never short or empty because of them.
            bound = self._seqs.get(name, 0) + 1
        bound = bound if before is None else min(before, bound)
        with self._builders:
            messages = self._ask_engine(lambda: self._engine.read(name, before=bound, after=after, limit=limit,
                                                                  max_bytes=self._max_reply))
            reply = protocol.with_id({"type": "history", "room": name}, reply_id)
            newest = after is None  # paging back: keep the newest that fit
            frame = budgets.bounded_frame(reply, "messages", messages, self._max_reply, newest)[0]
        self._reply_frame(client, frame)

    def moderate(self, client: Client, action, reply_id=None) -> None:
        """An operator's topic, kick, ban or mute (moderation.Action): stored, then put into the
        room's stream (members see who did what). An operator in the room gets its answer there,
        at its place, as with a chat; one outside it gets the same event directly. Raises
        ChatError forbidden (not an operator of the room), no_such_user (a kick of a nick not in
        the room), unavailable."""
        with self._lock:
            if not self._settle(client):
                return
            identity, actor = client.identity, client.nick
        self._moderation.check_operator(identity, action.room)
        target = None if action.nick is None else self._member_named(action.room, action.nick)
        if target is None and action.kind == "kick":
            raise ChatError("no_such_user", f"Nobody called {action.nick!r} is in {action.room!r}.")
        event = self._ask_engine(lambda: self._moderation.apply(action, actor, target or action.nick))
        with self._lock:
            echo = action.room in client.rooms
            client.pending += echo
        try:
            self._engine.announce(action.room, event, Meta((self.process_id, client.id), reply_id, echo=echo))
        except Unavailable as exc:
            with self._lock:
                client.pending -= echo
                self._settled.notify_all()
            raise unavailable(exc) from None
        if not echo:
            self.reply(client, protocol.with_id(event, reply_id))

    # -- helpers (lock not held) ---------------------------------------------------------------

    def _member_named(self, name: str, nick: str) -> str | None:
        """How the member of room `name` whose nick looks like `nick` spells it, or None."""
        if self._cluster:
            members = self._ask_engine(lambda: self._engine.members(name))
        else:
            with self._lock:
                room = self._rooms.get(name)
                members = [member.nick for member in room.members] if room else []
        return next((m for m in members if fold_nick(m) == fold_nick(nick)), None)

    def _refusal(self, check, *args) -> ChatError | None:
        """The ChatError `check(*args)` raises (Unavailable as `unavailable`), or None."""
        try:
            check(*args)
        except Unavailable as exc:
            return unavailable(exc)
        except ChatError as exc:
            return exc
        return None

    def _joined(self, name: str, members: list, history: list, newest: bool, reply_id, topic: str) -> bytes:
        reply = protocol.with_id({"type": "joined", "room": name, "members": members}, reply_id)
        if topic:
            reply["topic"] = topic
        if len(history) > protocol.MAX_RESUME:
            history, reply["truncated"] = history[: protocol.MAX_RESUME], True
        return budgets.bounded_frame(reply, "history", history, self._max_reply, newest)[0]

    def _publish(self, name: str, run: list) -> None:
        try:
            self._engine.publish(name, run)
        except Unavailable as exc:
            self.reject([(name, None, meta) for _nick, _text, meta in run], str(exc))
