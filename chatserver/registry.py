"""The requests: what each message type does to the hub's state (hub.py holds the state).

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
"""

import bisect
import itertools
import logging
import threading
import uuid

from chatserver import budgets, protocol
from chatserver.client import Client
from chatserver.engine import Meta, Unavailable
from chatserver.errors import ChatError
from chatserver.hub import Hold, Hub, unavailable

JOIN_TIMEOUT = 10.0  # seconds a join waits for its place in the stream
REPLY_BUILDERS = 4  # history replies (joined, history) read and encoded at once
ROOM_ITEM_BYTES = len('{"room":"r","members":1},')  # the smallest entry of a `rooms` list

log = logging.getLogger("roomchat.registry")


class Registry(Hub):
    """Every request a client can make, as one method each (the handlers call them)."""

    def __init__(self, engine, limits: dict):
        super().__init__(engine)
        self._engine = engine
        self._cluster = engine.cluster
        self._limits = limits
        self._max_rooms = limits["max_rooms"]
        self._max_reply = limits["max_reply_bytes"]
        self._dm_backlog = limits["max_outbox_bytes"] // 2  # a recipient with more waiting is busy
        # Replies built from history at once: each holds up to about a reply's worth of rows and
        # bytes while it is built, so 600 clients asking together cost a few replies' memory.
        # Taken before the lock, never while holding it.
        self._builders = threading.BoundedSemaphore(REPLY_BUILDERS)
        self._ids = itertools.count(1)
        self._guests = 0
        engine.start(self)

    # -- connections ---------------------------------------------------------------------------

    def connect(self, conn, limiter) -> Client:
        """Register a new connection under a free guest nick and send its `welcome`.

        Raises ChatError("unavailable") when a cluster engine cannot give it a nick."""
        while True:
            with self._lock:
                self._guests += 1
                nick = f"guest-{self._guests}" if not self._cluster else f"guest-{uuid.uuid4().hex[:6]}"
                if nick.casefold() in self._nicks:
                    continue
                client = Client(next(self._ids), conn, nick, limiter)
            if self._cluster and not self._claim(client, nick):
                continue
            with self._lock:
                self._clients[client.id] = client
                self._nicks[nick.casefold()] = client
                client.send(protocol.encode(protocol.welcome(nick, self._limits, self._engine.epoch)), own=True)
            return client

    def disconnect(self, client: Client) -> None:
        """Forget a client; every room it was in gets a presence `leave`. Safe to call twice."""
        with self._lock:
            if self._clients.pop(client.id, None) is None:
                return
            del self._nicks[client.nick.casefold()]
            left = [self._remove_member(client, name) for name in sorted(client.rooms)]
            self._settled.notify_all()
        for name, emptied in left:
            self._announce_quietly(name, protocol.presence(name, "leave", client.nick), client)
            if emptied and self._cluster:
                self._engine.unsubscribe(name)
        if self._cluster:
            self._engine.release_nick(client.nick, self._owner(client))

    # -- requests ------------------------------------------------------------------------------

    def reply(self, client: Client, event: dict) -> None:
        """Send a direct reply (pong, error) after the client's earlier requests are answered."""
        self._reply_frame(client, protocol.encode(event))

    def _reply_frame(self, client: Client, frame: bytes) -> None:
        with self._lock:
            if self._settle(client):
                client.send(frame, own=True)

    def set_nick(self, client: Client, nick: str, reply_id=None) -> None:
        """Take `nick`; peers sharing a room hear of it once. Raises ChatError nick_taken, unavailable."""
        folded = nick.casefold()
        with self._lock:
            if not self._settle(client):
                return
            owner = self._nicks.get(folded)
            if owner is not None and owner is not client:
                raise _nick_taken(nick)
            old = client.nick
        if self._cluster and folded != old.casefold() and not self._claim(client, nick):
            raise _nick_taken(nick)
        event = {"type": "nick", "old": old, "nick": nick}
        with self._lock:
            if client.id not in self._clients or self._nicks.get(folded, client) is not client:
                if self._cluster and folded != old.casefold():
                    self._engine.release_nick(nick, self._owner(client))
                if client.id in self._clients:
                    raise _nick_taken(nick)
                return
            del self._nicks[old.casefold()]
            self._nicks[folded] = client
            client.nick = nick
            client.send(protocol.encode(protocol.with_id(event, reply_id)), own=True)
            rooms = sorted(client.rooms)
        if self._cluster and folded != old.casefold():
            self._engine.release_nick(old, self._owner(client))
        change = uuid.uuid4().hex
        for name in rooms:
            self._announce_quietly(name, event, client, change)

    def join(self, client: Client, name: str, after: int | None = None, reply_id=None) -> None:
        """Enter a room (or re-enter one, without presence). `joined` carries the members and the
        last 50 chat events or, with `after`, every one with a higher seq, within 1000 events and
        `max_reply_bytes` (else `truncated`). Raises ChatError too_many_rooms, unavailable."""
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
                new_room = room is None
                room = self._room(name)
                hold = room.members[client] = Hold()
                client.rooms.add(name)
            nick = client.nick
        if not rejoin:
            emptied = False
            try:
                if self._cluster and new_room:
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
                log.warning("join of %s by %s not placed in %.0f s", name, client.nick, JOIN_TIMEOUT)
                hold.at = self._seqs.get(name, 0)
        limit = protocol.JOIN_HISTORY if after is None else protocol.MAX_RESUME + 1
        with self._builders:
            try:
                history = self._engine.read(name, after=after, before=hold.at + 1, limit=limit,
                                            max_bytes=self._max_reply)
                members = self._engine.members(name) if self._cluster else hold.members
                frame = self._joined(name, members, history, after is None, reply_id)
            except Unavailable as exc:
                frame, history = None, exc
            with self._lock:
                if room.members.get(client) is not hold:
                    return  # disconnected meanwhile
                room.members[client] = None
                if frame is None:  # read failed after the join was placed: the join stands, say so
                    client.send(protocol.encode(protocol.error(unavailable(history), reply_id)), own=True)
                    frame = self._joined(name, self._nicks_in(room), [], True, reply_id)
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

    def chat_many(self, client: Client, items: list) -> None:
        """Chats from one client that arrived together: [(room, text, reply_id)], or
        (ChatError, None, reply_id) for one refused already. Runs of chats to one room are
        published together; an error reply waits until the chats before it are delivered."""
        run_room, run = None, []
        for name, text, reply_id in [*items, (None, None, None)]:
            if run and (name != run_room or isinstance(name, ChatError) or name is None):
                self._publish(client, run_room, run)
                run_room, run = None, []
            if name is None:
                return
            try:
                if isinstance(name, ChatError):
                    raise name
                with self._lock:
                    if client.id not in self._clients:
                        return
                    if name not in client.rooms:
                        raise ChatError("not_in_room", f"Join {name!r} before sending to it.")
                    client.pending += 1
                    nick = client.nick
                run_room = name
                run.append((nick, text, self._meta(client, reply_id)))
            except ChatError as exc:
                self.reply(client, protocol.error(exc, reply_id))

    def dm(self, client: Client, nick: str, text: str, reply_id=None) -> None:
        """A direct message to a connected nick. Raises ChatError no_such_user, unavailable."""
        with self._lock:
            if not self._settle(client):
                return
            target = self._nicks.get(nick.casefold())
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
        with self._builders:
            messages = self._ask_engine(lambda: self._engine.read(name, before=before, after=after, limit=limit,
                                                                  max_bytes=self._max_reply))
            with self._lock:  # stored but not yet delivered: a member gets those live, not twice
                upto = self._seqs.get(name, 0)
            messages = [m for m in messages if m["seq"] <= upto]
            reply = protocol.with_id({"type": "history", "room": name}, reply_id)
            newest = after is None  # paging back: keep the newest that fit
            frame = budgets.bounded_frame(reply, "messages", messages, self._max_reply, newest)[0]
        self._reply_frame(client, frame)

    # -- helpers (lock not held) ---------------------------------------------------------------

    def _joined(self, name: str, members: list, history: list, newest: bool, reply_id) -> bytes:
        reply = protocol.with_id({"type": "joined", "room": name, "members": members}, reply_id)
        if len(history) > protocol.MAX_RESUME:
            history, reply["truncated"] = history[: protocol.MAX_RESUME], True
        return budgets.bounded_frame(reply, "history", history, self._max_reply, newest)[0]

    def _publish(self, client: Client, name: str, run: list) -> None:
        try:
            self._engine.publish(name, run)
        except Unavailable as exc:
            self.reject([(name, None, meta) for _nick, _text, meta in run], str(exc))

    def _announce_quietly(self, name: str, event: dict, client: Client, change: str | None = None) -> None:
        """Announce presence or a nick change; applied here already, so a failure is only logged."""
        try:
            self._engine.announce(name, event, self._meta(client, change=change))
        except Unavailable as exc:
            log.warning("%s in %s not announced: %s", event["type"], name, exc)

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
        try:
            return self._engine.claim_nick(nick, self._owner(client))
        except Unavailable as exc:
            raise unavailable(exc) from None


def _nick_taken(nick: str) -> ChatError:
    return ChatError("nick_taken", f"The nick {nick!r} is taken; choose another.")
