"""Who is connected, under which nick, in which rooms; and the fan-out of everything we send.

One non-reentrant lock guards all of it. Public methods take the lock; `_helpers` expect it held.
Inside the lock we touch dicts and sets and call `Client.send()`, which never blocks; the one
store read under the lock is a rare fallback in `_join_history`.

Decisions and effects. A request is decided at once, under the lock, against the *decided*
state: `client.rooms`, the nick table, the rooms' seqs. What it sends and what it changes in the
*effective* state that fan-out uses (`Room.members`, `client.joined`) is an effect, run by
`_later` in decision order. With a store that keeps events at once (memory) an effect runs
immediately. With a store that commits in the background (SQLite) a chat may not be sent before
its commit, so while any chat waits, every later effect waits behind it in one FIFO
(`_backlog`) and runs when the store reports the commit. Hence: every member sees a room's chat
events in seq order with no gap from its `joined` on; a client's replies come in the order of
its requests; and no presence, nick, reply or `joined` overtakes a chat decided before it.
"""

import functools
import logging
import threading
from collections import deque

from chatserver import protocol
from chatserver.client import Client
from chatserver.errors import ChatError

TAIL = 128  # recent chat events kept per live room: `joined` needs no store read under the lock
MAX_BACKLOG = 50_000  # effects waiting for commits; past this the store is stuck, so chats are refused

log = logging.getLogger("roomchat.registry")


class Room:
    """A room as fan-out sees it: members in join order and its recently delivered events."""

    __slots__ = ("members", "name", "tail")

    def __init__(self, name: str):
        self.name = name
        self.members: dict[Client, None] = {}
        self.tail: deque = deque(maxlen=TAIL)  # chat events delivered since the room appeared


class PendingChat:
    """A chat event waiting for its commit."""

    __slots__ = ("event", "reply_id", "sender")

    def __init__(self, event: dict, sender: Client, reply_id):
        self.event = event
        self.sender = sender
        self.reply_id = reply_id


def _request(method):
    """A request: run under the lock, and ignored once its client is disconnected (a client
    dropped for being too slow is disconnected from another thread while its own thread may
    still be handling what it had read)."""

    @functools.wraps(method)
    def locked(self, client, *args, **kwargs):
        with self._lock:
            if client in self._clients:
                method(self, client, *args, **kwargs)

    return locked


class Registry:
    def __init__(self, store, limits: dict):
        self._lock = threading.Lock()
        self._store = store
        store.on_durable = self._on_durable
        self._limits = limits
        self._max_rooms = limits["max_rooms"]
        self._clients: set[Client] = set()
        self._nicks: dict[str, Client] = {}  # casefolded nick -> client
        self._rooms: dict[str, Room] = {}  # rooms with members (effective)
        self._last_seq: dict[str, int] = store.last_seqs()  # outlives empty rooms: seqs are never reused
        self._delivered: dict[str, int] = dict(self._last_seq)  # highest seq sent to members
        self._backlog: deque = deque()  # PendingChat and effects, in decision order
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
            # First frame of a new connection: nothing can be queued for it yet, so no backlog.
            client.send(protocol.encode(protocol.welcome(nick, self._limits, self._store.epoch)))
            return client

    def disconnect(self, client: Client) -> None:
        """Forget a client; every room it was in gets a presence `leave`. Safe to call twice."""
        with self._lock:
            if client not in self._clients:
                return
            self._clients.discard(client)
            del self._nicks[client.nick.casefold()]
            rooms, client.rooms = sorted(client.rooms), set()

            def leave_all():
                for name in rooms:
                    self._leave_room(client, name)

            self._later(leave_all)

    def _free_guest_nick(self) -> str:
        while True:
            self._guests += 1
            nick = f"guest-{self._guests}"
            if nick.casefold() not in self._nicks:
                return nick

    # -- requests ------------------------------------------------------------------------------

    @_request
    def reply(self, client: Client, event: dict) -> None:
        """Send a direct reply (pong, error) in order with everything decided before it."""
        self._send(client, protocol.encode(event))

    @_request
    def set_nick(self, client: Client, nick: str, reply_id=None) -> None:
        owner = self._nicks.get(nick.casefold())
        if owner is not None and owner is not client:
            raise ChatError("nick_taken", f"The nick {nick!r} is taken; choose another.")
        old = client.nick
        del self._nicks[old.casefold()]
        self._nicks[nick.casefold()] = client
        client.nick = nick
        event = {"type": "nick", "old": old, "nick": nick}

        def announce():
            client.shown = nick
            frame = protocol.encode(event)
            for peer in self._room_peers(client):
                self._out(peer, frame)
            self._out(client, protocol.encode(protocol.with_id(event, reply_id)))

        self._later(announce)

    def join(self, client: Client, name: str, after: int | None = None, reply_id=None) -> None:
        """Enter a room. `joined` carries the members and either the last 50 chat events or,
        with `after`, every event with a higher seq (up to 1000, then `truncated`)."""
        # Read the store first, outside the lock; `_join_history` adds what is delivered meanwhile.
        if after is None:
            stored = self._store.read(name, limit=protocol.JOIN_HISTORY)
        else:
            stored = self._store.read(name, after=after, limit=protocol.MAX_RESUME + 1)
        with self._lock:
            if client not in self._clients:
                return
            if name not in client.rooms and len(client.rooms) >= self._max_rooms:
                raise ChatError("too_many_rooms", f"You are in {self._max_rooms} rooms, the limit; leave one first.")
            client.rooms.add(name)

            def enter():
                room = self._rooms.get(name) or Room(name)
                history, truncated = self._join_history(room, stored, after)  # before any change
                self._rooms[name] = room
                if client not in room.members:
                    self._fan_out(room, protocol.encode(protocol.presence(name, "join", client.shown)))
                    room.members[client] = None
                    client.joined.add(name)
                reply = {"type": "joined", "room": name, "members": [m.shown for m in room.members], "history": history}
                if truncated:
                    reply["truncated"] = True
                self._out(client, protocol.encode(protocol.with_id(reply, reply_id)))

            self._later(enter)

    @_request
    def leave(self, client: Client, name: str, reply_id=None) -> None:
        if name not in client.rooms:
            raise ChatError("not_in_room", f"You are not in {name!r}.")
        client.rooms.discard(name)

        def go():
            self._leave_room(client, name)
            self._out(client, protocol.encode(protocol.with_id({"type": "left", "room": name}, reply_id)))

        self._later(go)

    @_request
    def chat(self, client: Client, name: str, text: str, reply_id=None) -> None:
        self._chat(client, name, text, reply_id)

    @_request
    def chat_many(self, client: Client, items: list) -> None:
        """Several chats from one client in one step: (room, text, reply_id) each, or
        (ChatError, None, reply_id) for one refused already. Each member gets one write."""
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
        if len(self._backlog) >= MAX_BACKLOG:  # commits have stalled (disk full?): don't pile up
            raise ChatError("rate_limited", "The server cannot store messages right now; try again shortly.")
        seq = self._last_seq.get(name, 0) + 1
        self._last_seq[name] = seq
        event = protocol.chat_event(name, client.nick, text, seq)
        if self._store.append(event):  # stored already (memory): send now, or in turn
            self._later(lambda: self._deliver(event, client, reply_id))
        else:  # the store calls _on_durable once it is committed
            self._backlog.append(PendingChat(event, client, reply_id))

    @_request
    def dm(self, client: Client, nick: str, text: str, reply_id=None) -> None:
        target = self._nicks.get(nick.casefold())
        if target is None:
            raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")
        event = protocol.dm_event(client.nick, target.nick, text)
        if target is not client:
            self._send(target, protocol.encode(event))
        self._send(client, protocol.encode(protocol.with_id(event, reply_id)))

    @_request
    def list_rooms(self, client: Client, reply_id=None) -> None:
        def answer():
            rooms = [{"room": r.name, "members": len(r.members)} for r in sorted(self._rooms.values(), key=_name)]
            self._out(client, protocol.encode(protocol.with_id({"type": "rooms", "rooms": rooms}, reply_id)))

        self._later(answer)

    @_request
    def who(self, client: Client, name: str, reply_id=None) -> None:
        def answer():
            room = self._rooms.get(name)
            members = [m.shown for m in room.members] if room else []
            reply = {"type": "who", "room": name, "members": members}
            self._out(client, protocol.encode(protocol.with_id(reply, reply_id)))

        self._later(answer)

    def history(self, client: Client, name: str, before=None, after=None, limit=50, reply_id=None) -> None:
        """Members page through a room's stored chat events, oldest first."""
        with self._lock:
            if client not in self._clients:
                return
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} to read its history.")
        messages = self._store.read(name, before=before, after=after, limit=limit)
        with self._lock:

            def answer():
                # Committed but not yet delivered events stay out; a member gets those live.
                upto = self._delivered.get(name, 0)
                reply = {"type": "history", "room": name, "messages": [m for m in messages if m["seq"] <= upto]}
                self._out(client, protocol.encode(protocol.with_id(reply, reply_id)))

            self._later(answer)

    def stats(self) -> dict:
        with self._lock:
            return {"connections": len(self._clients), "rooms": len(self._rooms)}

    # -- helpers (lock held) -------------------------------------------------------------------

    def _later(self, effect) -> None:
        """Run `effect` now, or after everything already waiting for the store."""
        if self._backlog:
            self._backlog.append(effect)
        else:
            effect()

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

    def _fan_out(self, room: Room, frame: bytes) -> None:
        for member in room.members:
            self._out(member, frame)

    def _on_durable(self, events: list) -> None:
        """Called by a background store, in append order, once `events` are committed; all it
        releases is written as one batch (one write per client for the whole commit)."""
        with self._lock:
            self._batch = {}
            try:
                for event in events:
                    while callable(self._backlog[0]):
                        _run(self._backlog.popleft())
                    pending = self._backlog.popleft()
                    assert pending.event is event, "store committed events out of order"
                    _run(lambda p=pending: self._deliver(p.event, p.sender, p.reply_id))
                while self._backlog and callable(self._backlog[0]):
                    _run(self._backlog.popleft())
            finally:
                self._flush_batch()

    def _deliver(self, event: dict, sender: Client, reply_id) -> None:
        """Send a chat event, encoded once, to the room's members; the sender's copy has its id."""
        name = event["room"]
        self._delivered[name] = event["seq"]
        room = self._rooms.get(name)
        if room is None:
            return
        room.tail.append(event)
        frame = protocol.encode(event)
        own = frame if reply_id is None else protocol.encode({**event, "id": reply_id})
        out = self._out if self._batch is not None else Client.send
        for member in room.members:
            out(member, own if member is sender else frame)

    def _join_history(self, room: Room, stored: list, after: int | None) -> tuple[list, bool]:
        """What `joined` replays: `stored` (read before the join was decided) plus the events
        delivered since, from the room's tail. If the two do not meet (a burst longer than the
        tail, a room that was empty meanwhile), read the store again, here under the lock: rare."""
        if after is not None and len(stored) > protocol.MAX_RESUME:  # truncated: newer ones can wait
            return stored[: protocol.MAX_RESUME], True
        upto = self._delivered.get(room.name, 0)
        merged = [e for e in stored if e["seq"] <= upto]
        last = merged[-1]["seq"] if merged else (after or 0)
        newer = [e for e in room.tail if e["seq"] > last]
        if after is None and len(newer) >= protocol.JOIN_HISTORY:
            return newer[-protocol.JOIN_HISTORY :], False
        if not newer or newer[0]["seq"] == last + 1:
            merged += newer
            if _replays(merged, stored, after, upto):
                return _cut(merged, after)
        limit = protocol.JOIN_HISTORY if after is None else protocol.MAX_RESUME + 1
        try:
            merged = self._store.read(room.name, after=after, before=upto + 1, limit=limit)
        except Exception:  # the store failed: `joined` with what we have beats no `joined`
            log.exception("history read for %s failed", room.name)
        return _cut(merged, after)

    def _leave_room(self, client: Client, name: str) -> None:
        room = self._rooms.get(name)
        if room is None or client not in room.members:
            return
        del room.members[client]
        client.joined.discard(name)
        if room.members:
            self._fan_out(room, protocol.encode(protocol.presence(name, "leave", client.shown)))
        else:
            del self._rooms[name]

    def _room_peers(self, client: Client) -> set:
        """Everyone sharing a room with `client`, each once, without `client`."""
        peers = set()
        for name in client.joined:
            peers.update(self._rooms[name].members)
        peers.discard(client)
        return peers


def _run(effect) -> None:
    """Run an effect from the store's thread: one that fails is logged, the rest still run."""
    try:
        effect()
    except Exception:
        log.exception("effect failed")


def _cut(events: list, after: int | None) -> tuple[list, bool]:
    if after is None:
        return events[-protocol.JOIN_HISTORY :], False
    return events[: protocol.MAX_RESUME], len(events) > protocol.MAX_RESUME


def _replays(merged: list, stored: list, after: int | None, upto: int) -> bool:
    """True when `merged` is what a store read right now would give for the join."""
    if not merged:
        return upto <= (after or 0)
    if merged[-1]["seq"] - merged[0]["seq"] != len(merged) - 1:  # seqs rise, so this means a gap
        return False
    starts_where_history_starts = bool(stored) and merged[0] is stored[0]
    if after is not None:
        if len(merged) > protocol.MAX_RESUME:
            return merged[0]["seq"] == after + 1 or starts_where_history_starts
        return merged[-1]["seq"] == upto and (merged[0]["seq"] == after + 1 or starts_where_history_starts)
    complete = len(merged) >= protocol.JOIN_HISTORY or merged[0]["seq"] == 1
    whole_store = starts_where_history_starts and len(stored) < protocol.JOIN_HISTORY
    return merged[-1]["seq"] == upto and (complete or whole_store)


def _name(room: Room) -> str:
    return room.name
