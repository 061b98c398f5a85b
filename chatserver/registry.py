"""Who is connected, under which nick, in which rooms; and the fan-out of everything we send.

One non-reentrant lock guards all of it. Public methods take the lock; `_helpers` expect it held.
Inside the lock we only touch dicts and sets and call `Client.send()`, which never blocks.

Ordering rule: every decision (a chat's seq, a join, a leave, a reply) is made under the lock,
and what it sends goes out in the order the decisions were made. With a store that keeps events
at once (memory) that is simply "send now". With a store that commits in the background
(SQLite), a chat event may not be sent before it is committed; while any chat waits for its
commit, everything decided after it waits too, in one FIFO (`_backlog`), and leaves in order
when the store reports the commit. So every member sees a room's events in seq order with no
gap from the moment it joined, a client's replies come in the order of its requests, and no
presence or reply overtakes a chat decided before it.
"""

import threading
from collections import deque

from chatserver import protocol
from chatserver.client import Client
from chatserver.errors import ChatError

LIVE = None  # value of Room.members[client] once the member's `joined` reply is sent


class Room:
    """A room with members. A member maps to LIVE, or to a list of frames held back while its
    `joined` reply is being prepared, so no room event can overtake `joined`."""

    __slots__ = ("members", "name")

    def __init__(self, name: str):
        self.name = name
        self.members: dict[Client, list | None] = {}


class PendingChat:
    """A chat event waiting for its commit, with whom it must reach once committed."""

    __slots__ = ("event", "recipients", "reply_id", "sender")

    def __init__(self, event: dict, sender: Client, reply_id, recipients: list):
        self.event = event
        self.sender = sender
        self.reply_id = reply_id
        self.recipients = recipients  # the members when the seq was assigned


class Registry:
    def __init__(self, store, limits: dict):
        self._lock = threading.Lock()
        self._store = store
        store.on_durable = self._on_durable
        self._limits = limits
        self._max_rooms = limits["max_rooms"]
        self._clients: set[Client] = set()
        self._nicks: dict[str, Client] = {}  # casefolded nick -> client
        self._rooms: dict[str, Room] = {}  # only rooms with members
        self._last_seq: dict[str, int] = store.last_seqs()  # outlives empty rooms: seqs are never reused
        self._delivered: dict[str, int] = dict(self._last_seq)  # highest seq sent to members
        self._backlog: deque = deque()  # PendingChat and deferred sends, in decision order
        self._batch: dict | None = None  # while set: frames per client, written once at the end
        self._guests = 0

    # -- connections ---------------------------------------------------------------------------

    def connect(self, conn, limiter) -> Client:
        """Register a new connection under a free guest nick and send its `welcome`."""
        with self._lock:
            nick = self._free_guest_nick()
            client = Client(conn, nick, limiter)
            self._clients.add(client)
            self._nicks[nick.casefold()] = client
            # First frame on a new connection: nothing can be queued for it yet, so no backlog.
            client.send(protocol.encode(protocol.welcome(nick, self._limits, self._store.epoch)))
            return client

    def disconnect(self, client: Client) -> None:
        """Forget a client; every room it was in gets a presence `leave`. Safe to call twice."""
        with self._lock:
            if client not in self._clients:
                return
            for name in sorted(client.rooms):
                self._remove_member(client, name)
            self._clients.discard(client)
            del self._nicks[client.nick.casefold()]

    def _free_guest_nick(self) -> str:
        while True:
            self._guests += 1
            nick = f"guest-{self._guests}"
            if nick.casefold() not in self._nicks:
                return nick

    # -- requests ------------------------------------------------------------------------------

    def reply(self, client: Client, event: dict) -> None:
        """Send a direct reply (pong, error) in order with everything decided before it."""
        with self._lock:
            self._send(client, protocol.encode(event))

    def set_nick(self, client: Client, nick: str, reply_id=None) -> None:
        with self._lock:
            owner = self._nicks.get(nick.casefold())
            if owner is not None and owner is not client:
                raise ChatError("nick_taken", f"The nick {nick!r} is taken; choose another.")
            old = client.nick
            del self._nicks[old.casefold()]
            self._nicks[nick.casefold()] = client
            client.nick = nick
            event = {"type": "nick", "old": old, "nick": nick}
            frame = protocol.encode(event)
            for other in self._room_peers(client):
                self._send(other, frame)
            self._send(client, protocol.encode(protocol.with_id(event, reply_id)))

    def join(self, client: Client, name: str, after: int | None = None, reply_id=None) -> None:
        """Enter a room. `joined` carries the members and either the last 50 chat events or,
        with `after`, every event with a higher seq (up to 1000, then `truncated`)."""
        with self._lock:
            room = self._rooms.get(name)
            rejoin = room is not None and client in room.members
            if not rejoin and len(client.rooms) >= self._max_rooms:
                raise ChatError("too_many_rooms", f"You are in {self._max_rooms} rooms, the limit; leave one first.")
            if room is None:
                room = self._rooms[name] = Room(name)
            if not rejoin:
                self._room_event(room, protocol.encode(protocol.presence(name, "join", client.nick)))
                client.rooms.add(name)
            held = room.members[client] = []  # from here on, room events for it wait in `held`
            members = [m.nick for m in room.members]
            upto = self._delivered.get(name, 0)
        # Read the store outside the lock: it holds every event up to `upto`; later ones are in `held`.
        if after is None:
            history, truncated = self._store.read(name, before=upto + 1, limit=protocol.JOIN_HISTORY), False
        else:
            history = self._store.read(name, after=after, before=upto + 1, limit=protocol.MAX_RESUME + 1)
            truncated = len(history) > protocol.MAX_RESUME
            history = history[: protocol.MAX_RESUME]
        reply = {"type": "joined", "room": name, "members": members, "history": history}
        if truncated:
            reply["truncated"] = True
        frame = protocol.encode(protocol.with_id(reply, reply_id))

        def go_live():
            if room.members.get(client) is held:  # not left or disconnected meanwhile
                self._out(client, frame)
                for queued in held:
                    self._out(client, queued)
                room.members[client] = LIVE

        with self._lock:
            self._later(go_live)

    def leave(self, client: Client, name: str, reply_id=None) -> None:
        with self._lock:
            if name not in client.rooms:
                raise ChatError("not_in_room", f"You are not in {name!r}.")
            self._remove_member(client, name)
            self._send(client, protocol.encode(protocol.with_id({"type": "left", "room": name}, reply_id)))

    def chat(self, client: Client, name: str, text: str, reply_id=None) -> None:
        with self._lock:
            self._chat(client, name, text, reply_id)

    def chat_many(self, client: Client, items: list) -> None:
        """Several chats from one client in one step: (room, text, reply_id) each, or
        (ChatError, None, reply_id) for one refused already. Each member gets one write."""
        with self._lock:
            self._batch = {} if len(items) > 1 else None
            try:
                for name, text, reply_id in items:
                    try:
                        if isinstance(name, ChatError):
                            raise name
                        self._chat(client, name, text, reply_id)
                    except ChatError as exc:
                        self._send(client, protocol.encode(protocol.error(exc, reply_id)))
            finally:
                self._flush_batch()

    def _chat(self, client: Client, name: str, text: str, reply_id) -> None:
        if name not in client.rooms:
            raise ChatError("not_in_room", f"Join {name!r} before sending to it.")
        seq = self._last_seq.get(name, 0) + 1
        self._last_seq[name] = seq
        event = protocol.chat_event(name, client.nick, text, seq)
        if self._store.append(event):  # stored already (memory): send now, or in turn
            self._later(lambda: self._deliver(event, client, reply_id))
        else:  # the store calls _on_durable once it is committed
            recipients = list(self._rooms[name].members)
            self._backlog.append(PendingChat(event, client, reply_id, recipients))

    def dm(self, client: Client, nick: str, text: str, reply_id=None) -> None:
        with self._lock:
            target = self._nicks.get(nick.casefold())
            if target is None:
                raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")
            event = protocol.dm_event(client.nick, target.nick, text)
            if target is not client:
                self._send(target, protocol.encode(event))
            self._send(client, protocol.encode(protocol.with_id(event, reply_id)))

    def list_rooms(self, client: Client, reply_id=None) -> None:
        with self._lock:
            rooms = [{"room": r.name, "members": len(r.members)} for r in sorted(self._rooms.values(), key=_name)]
            self._send(client, protocol.encode(protocol.with_id({"type": "rooms", "rooms": rooms}, reply_id)))

    def who(self, client: Client, name: str, reply_id=None) -> None:
        with self._lock:
            room = self._rooms.get(name)
            members = [m.nick for m in room.members] if room else []
            reply = {"type": "who", "room": name, "members": members}
            self._send(client, protocol.encode(protocol.with_id(reply, reply_id)))

    def history(self, client: Client, name: str, before=None, after=None, limit=50, reply_id=None) -> None:
        """Members page through a room's stored chat events, oldest first."""
        with self._lock:
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} to read its history.")
            upto = self._delivered.get(name, 0) + 1
        before = upto if before is None else min(before, upto)
        messages = self._store.read(name, before=before, after=after, limit=limit)
        reply = {"type": "history", "room": name, "messages": messages}
        with self._lock:
            self._send(client, protocol.encode(protocol.with_id(reply, reply_id)))

    def stats(self) -> dict:
        with self._lock:
            return {"connections": len(self._clients), "rooms": len(self._rooms)}

    # -- helpers (lock held) -------------------------------------------------------------------

    def _later(self, action) -> None:
        """Run `action` now, or after everything already waiting for the store."""
        assert self._lock.locked()
        if self._backlog:
            self._backlog.append(action)
        else:
            action()

    def _send(self, client: Client, frame: bytes) -> None:
        self._later(lambda: self._out(client, frame))

    def _out(self, client: Client, frame: bytes) -> None:
        """Write a frame to a client now, or add it to the batch written when the step ends."""
        if self._batch is None:
            client.send(frame)
        elif client in self._batch:
            self._batch[client].append(frame)
        else:
            self._batch[client] = [frame]

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        for client, queued in (batch or {}).items():
            client.send(queued[0] if len(queued) == 1 else b"".join(queued))

    def _to_member(self, room: Room, member: Client, frame: bytes) -> None:
        """A room event for `member`: held back while it is joining, else written."""
        held = room.members.get(member, LIVE)  # LIVE too for a member who left since
        if held is LIVE:
            self._out(member, frame)
        else:
            held.append(frame)

    def _room_event(self, room: Room, frame: bytes) -> None:
        """Send to the room's members as they are now (presence)."""
        recipients = list(room.members)

        def send_to_recipients():
            for member in recipients:  # one who left since still gets what was decided before
                self._to_member(room, member, frame)

        self._later(send_to_recipients)

    def _on_durable(self, events: list) -> None:
        """Called by a background store, in append order, once `events` are committed; all it
        releases is written as one batch (one write per client for the whole commit)."""
        with self._lock:
            self._batch = {}
            try:
                for event in events:
                    while callable(self._backlog[0]):
                        self._backlog.popleft()()
                    pending = self._backlog.popleft()
                    assert pending.event is event, "store committed events out of order"
                    self._deliver(event, pending.sender, pending.reply_id, pending.recipients)
                while self._backlog and callable(self._backlog[0]):
                    self._backlog.popleft()()
            finally:
                self._flush_batch()

    def _deliver(self, event: dict, sender: Client, reply_id, recipients: list | None = None) -> None:
        """Send a chat event, encoded once, to the room's members (and, for an event that
        waited for its commit, to members who have left since its seq was assigned)."""
        name = event["room"]
        self._delivered[name] = event["seq"]
        frame = protocol.encode(event)
        own = frame if reply_id is None else protocol.encode({**event, "id": reply_id})
        room = self._rooms.get(name)
        members = room.members if room is not None else {}
        out = self._out if self._batch is not None else Client.send
        for member, held in members.items():
            data = own if member is sender else frame
            if held is LIVE:
                out(member, data)
            else:
                held.append(data)
        for member in recipients or ():
            if member not in members:
                out(member, own if member is sender else frame)

    def _remove_member(self, client: Client, name: str) -> None:
        room = self._rooms[name]
        del room.members[client]
        client.rooms.discard(name)
        if room.members:
            self._room_event(room, protocol.encode(protocol.presence(name, "leave", client.nick)))
        else:
            del self._rooms[name]

    def _room_peers(self, client: Client) -> set:
        """Everyone sharing a room with `client`, each once, without `client`."""
        peers = set()
        for name in client.rooms:
            peers.update(self._rooms[name].members)
        peers.discard(client)
        return peers


def _name(room: Room) -> str:
    return room.name
