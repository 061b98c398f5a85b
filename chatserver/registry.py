"""Who is connected, under which nick, in which rooms; and the fan-out of room events.

One non-reentrant lock guards all of it. Public methods take the lock; `_helpers` expect it held.
Inside the lock we only touch dicts and sets and call `Client.send()`, which never blocks.

Ordering rule: a chat event's seq is assigned, the event handed to the store, and (once the
store has it) put on every member's outgoing queue inside one critical section per step, in seq
order. Each connection writes its queue in order, so every member sees a room's events in seq
order with no gap from the moment it joined.
"""

import threading
from collections import deque

from chatserver import protocol
from chatserver.client import Client
from chatserver.errors import ChatError

LIVE = None  # value of Room.members[client] once the member's `joined` reply is queued


class Room:
    """A room with members. A member maps to LIVE, or to a list of frames held back while its
    `joined` reply is being prepared, so no event can overtake `joined`."""

    __slots__ = ("members", "name")

    def __init__(self, name: str):
        self.name = name
        self.members: dict[Client, list | None] = {}


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
        self._delivered: dict[str, int] = dict(self._last_seq)  # highest seq handed to members
        self._pending: deque = deque()  # (event, sender, reply_id) the store has not committed yet
        self._guests = 0

    # -- connections ---------------------------------------------------------------------------

    def connect(self, conn, limiter) -> Client:
        """Register a new connection under a free guest nick and queue its `welcome`."""
        with self._lock:
            nick = self._free_guest_nick()
            client = Client(conn, nick, limiter)
            self._clients.add(client)
            self._nicks[nick.casefold()] = client
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
                other.send(frame)
            client.send(protocol.encode(protocol.with_id(event, reply_id)))

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
                self._broadcast(room, protocol.presence(name, "join", client.nick))
                client.rooms.add(name)
            held = room.members[client] = room.members.get(client) or []
            members = [m.nick for m in room.members]
            upto = self._delivered.get(name, 0)
        # The store read happens outside the lock; events delivered meanwhile wait in `held`.
        if after is None:
            history, truncated = self._store.read(name, before=upto + 1, limit=protocol.JOIN_HISTORY), False
        else:
            history = self._store.read(name, after=after, before=upto + 1, limit=protocol.MAX_RESUME + 1)
            truncated = len(history) > protocol.MAX_RESUME
            history = history[: protocol.MAX_RESUME]
        reply = {"type": "joined", "room": name, "members": members, "history": history}
        if truncated:
            reply["truncated"] = True
        with self._lock:
            if room.members.get(client) is not held:  # left (or disconnected) while we read
                return
            client.send(protocol.encode(protocol.with_id(reply, reply_id)))
            for frame in held:
                client.send(frame)
            room.members[client] = LIVE

    def leave(self, client: Client, name: str, reply_id=None) -> None:
        with self._lock:
            if name not in client.rooms:
                raise ChatError("not_in_room", f"You are not in {name!r}.")
            self._remove_member(client, name)
            client.send(protocol.encode(protocol.with_id({"type": "left", "room": name}, reply_id)))

    def chat(self, client: Client, name: str, text: str, reply_id=None) -> None:
        with self._lock:
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} before sending to it.")
            seq = self._last_seq.get(name, 0) + 1
            self._last_seq[name] = seq
            event = protocol.chat_event(name, client.nick, text, seq)
            if self._store.append(event):
                self._deliver(event, client, reply_id)
            else:
                self._pending.append((event, client, reply_id))

    def dm(self, client: Client, nick: str, text: str, reply_id=None) -> None:
        with self._lock:
            target = self._nicks.get(nick.casefold())
            if target is None:
                raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")
            event = protocol.dm_event(client.nick, target.nick, text)
            if target is not client:
                target.send(protocol.encode(event))
            client.send(protocol.encode(protocol.with_id(event, reply_id)))

    def list_rooms(self, client: Client, reply_id=None) -> None:
        with self._lock:
            rooms = [{"room": r.name, "members": len(r.members)} for r in sorted(self._rooms.values(), key=_name)]
            client.send(protocol.encode(protocol.with_id({"type": "rooms", "rooms": rooms}, reply_id)))

    def who(self, client: Client, name: str, reply_id=None) -> None:
        with self._lock:
            room = self._rooms.get(name)
            members = [m.nick for m in room.members] if room else []
            client.send(protocol.encode(protocol.with_id({"type": "who", "room": name, "members": members}, reply_id)))

    def history(self, client: Client, name: str, before=None, after=None, limit=50, reply_id=None) -> None:
        """Members page through a room's stored chat events, oldest first."""
        with self._lock:
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} to read its history.")
            upto = self._delivered.get(name, 0) + 1
        before = upto if before is None else min(before, upto)
        messages = self._store.read(name, before=before, after=after, limit=limit)
        reply = {"type": "history", "room": name, "messages": messages}
        client.send(protocol.encode(protocol.with_id(reply, reply_id)))

    def stats(self) -> dict:
        with self._lock:
            return {"connections": len(self._clients), "rooms": len(self._rooms)}

    # -- helpers (lock held) -------------------------------------------------------------------

    def _on_durable(self, events: list) -> None:
        """Called by a background store, in append order, once `events` are committed."""
        with self._lock:
            for event in events:
                pending_event, sender, reply_id = self._pending.popleft()
                assert pending_event is event, "store committed events out of order"
                self._deliver(event, sender, reply_id)

    def _deliver(self, event: dict, sender: Client, reply_id) -> None:
        name = event["room"]
        self._delivered[name] = event["seq"]
        room = self._rooms.get(name)
        if room is not None:
            frame = protocol.encode(event)
            own = frame if reply_id is None else protocol.encode({**event, "id": reply_id})
            self._fan_out(room, frame, sender, own)

    def _broadcast(self, room: Room, event: dict) -> None:
        self._fan_out(room, protocol.encode(event))

    def _fan_out(self, room: Room, frame: bytes, sender: Client | None = None, own: bytes = b"") -> None:
        """The same bytes to every member; the sender's copy (with its request id) is `own`."""
        for member, held in room.members.items():
            data = own if member is sender else frame
            if held is LIVE:
                member.send(data)
            else:
                held.append(data)

    def _remove_member(self, client: Client, name: str) -> None:
        assert self._lock.locked()
        room = self._rooms[name]
        del room.members[client]
        client.rooms.discard(name)
        if room.members:
            self._broadcast(room, protocol.presence(name, "leave", client.nick))
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
