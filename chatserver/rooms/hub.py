"""The hub: this process's clients and rooms, and the fan-out of each room's stream to them.

One copy of each fact, under one non-reentrant lock (`_lock`): `_clients` (id -> Client),
`_nicks` (folded nick -> Client: protocol.fold_nick, so look-alikes are one nick), `_rooms`
(room -> Room with its local members, and `_names`, the same rooms' names in sorted order,
for `rooms` to page through; a Client's `rooms` is the index of the same membership,
changed only with it), `_seqs` (room -> last chat seq delivered here). Methods that take the
lock are public; `_helpers` assert it is held. Under the lock we touch dicts and call
`Client.send()`, which never blocks; never an engine.

The engine calls `deliver`, `reject` and `deliver_dm` from its own threads (the publishing one,
the SQLite writer, the Redis listener). `deliver` sends each event, encoded once, to the room's
members, batched so each client gets one write per call. Joining has a seam: a joiner is a
member at once, but receives events only from its own join's place in the stream (`Hold`); the
Registry (rooms/registry.py) sends its `joined` and then what was held. A kick or ban takes its target
out of the room where it is delivered (rooms/moderation.py), followed by a presence `leave`.
"""

import bisect
import logging
import threading
import time
import uuid

from chatserver import protocol
from chatserver.engines.base import Meta, Unavailable
from chatserver.errors import ChatError
from chatserver.ops import logs, trace
from chatserver.ops.metrics import Metrics
from chatserver.rooms.client import Client
from chatserver.rooms.moderation import removes_member

SETTLE_TIMEOUT = 30.0  # seconds a request waits for its client's chats, at most: past the store's give-up
# time (fail_after 10 s + a busy timeout), so replies stay in order even when commits fail

log = logging.getLogger("roomchat.hub")


class Hold:
    """A member between its join and its `joined`: `at` is None until its own join comes back
    from the stream (events before that are not its to see), then the room's seq there, and
    `frames` keeps what follows until `joined` is sent."""

    __slots__ = ("at", "frames", "members")

    def __init__(self, at: int | None = None, members: list | None = None):
        self.at = at
        self.frames: list[bytes] = []
        self.members = members  # nicks at the join's place in the stream (one process)


class Room:
    __slots__ = ("members", "name")

    def __init__(self, name: str):
        self.name = name
        self.members: dict[Client, Hold | None] = {}  # join order; None = receiving live



def unavailable(exc: Unavailable) -> ChatError:
    return ChatError("unavailable", f"The server cannot do that right now ({exc}); try again shortly.")


class Hub:
    """Local clients and rooms, and delivery. The Registry (a subclass) adds the requests."""

    def __init__(self, engine, metrics: Metrics | None = None):
        self.metrics = metrics or Metrics()  # engines count into it too (metrics.of)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # pending chats delivered, joins placed
        self.process_id = uuid.uuid4().hex[:12]
        self._clients: dict[int, Client] = {}
        self._nicks: dict[str, Client] = {}
        self._rooms: dict[str, Room] = {}
        self._names: list[str] = []  # sorted keys of _rooms, changed with it (_room, _remove_member)
        self._seqs: dict[str, int] = engine.last_seqs() if hasattr(engine, "last_seqs") else {}
        self._batch: dict | None = None  # while set: frames per client, written once at the end
        self._tokens: dict[str, Client] = {}  # resume token -> the client it takes over

    def stats(self) -> dict:
        with self._lock:
            return {"connections": len(self._clients), "rooms": len(self._rooms)}

    def close_all(self, code: int, reason: str) -> None:
        """Close every client's connection with `code` (the engine's history was reset). Raises nothing."""
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.conn.close(code, reason)

    def has_room(self, name: str) -> bool:
        """True while a local client is in `name` (the Redis engine asks before unsubscribing)."""
        with self._lock:
            return name in self._rooms

    # -- called by the engine ------------------------------------------------------------------

    def forget(self, names: list) -> set:
        """The engine forgot these rooms (their history is gone): drop their last seqs, except
        for rooms someone is in now; returns those. Raises nothing."""
        with self._lock:
            live = {name for name in names if name in self._rooms}
            for name in names:
                if name not in live:
                    self._seqs.pop(name, None)
            return live

    def deliver(self, items: list) -> None:
        """[(room, event, Meta)] from the engine, in stream order per room: send each, encoded
        once, to the room's members, all in one batch (one write per client for the call)."""
        started = time.perf_counter()
        with self._lock:
            self._batch = {}
            try:
                for name, event, meta in items:
                    self._deliver_one(name, event, meta)
            finally:
                self.metrics.published(items, self._flush_batch(), started)
                self._settled.notify_all()

    def reject(self, items: list, reason: str) -> None:
        """Published chats that will not be delivered: their senders get `unavailable`."""
        with self._lock:
            for _name, _event, meta in items:
                sender = self._origin(meta)
                if sender is not None:
                    sender.pending -= 1
                    error = protocol.error(unavailable(Unavailable(reason)), meta.reply_id)
                    self.metrics.error(error)
                    sender.send(protocol.encode(error), own=True)
            self._settled.notify_all()

    def deliver_dm(self, client_id: int, event: dict) -> None:
        with self._lock:
            client = self._clients.get(client_id)
            if client is not None:
                client.send(protocol.encode(event))

    # -- helpers (lock held) -------------------------------------------------------------------

    def _deliver_one(self, name: str, event: dict, meta: Meta) -> None:
        assert self._lock.locked()
        kind = event["type"]
        sender = self._origin(meta)
        echo = kind == "chat" or meta.echo  # the sender gets its own copy, with its request's id
        if kind == "chat":
            self._seqs[name] = event["seq"]
        if echo and sender is not None:
            sender.pending -= 1
        room = self._rooms.get(name)
        if room is None:
            return
        if kind == "presence" and sender is not None and event["event"] == "join":
            hold = room.members.get(sender)
            if hold is not None and hold.at is None:  # our own join: its place in the stream
                hold.at = self._seqs.get(name, 0) if meta.at is None else meta.at
                hold.members = self._nicks_in(room)
        frame = protocol.encode(event)
        own = frame if not echo or meta.reply_id is None else protocol.encode({**event, "id": meta.reply_id})
        for member, hold in room.members.items():
            if member is sender:
                if not echo:
                    continue  # own nick or leave: answered directly
                data = own
            else:
                data = frame
            if hold is not None and hold.at is None:
                continue  # a joiner before its own join's place: not its to see (and not seen)
            if kind == "nick":
                if meta.change in member.changes:
                    continue
                member.changes.append(meta.change)
            if hold is None:
                self._out(member, data, member is sender)
            else:  # placed, `joined` not sent yet: held until it is
                hold.frames.append(data)
        if trace.ON:
            trace.room_event(name, event, self._batch or {}, frame, own)
        if meta.echo and sender is not None and sender not in room.members:
            self._out(sender, own, True)  # taken out of the room since its request: it still gets its answer
        if removes_member(event):
            self._drop_member(room, event["nick"], frame)

    def _drop_member(self, room: Room, nick: str, frame: bytes) -> None:
        """A kick or ban (`frame`) was delivered: take its target out if it is a member here, and
        tell the others (a cluster engine keeps this process subscribed to a room it empties:
        harmless). A target still joining gets the event now (what it held is dropped with it)."""
        assert self._lock.locked()
        folded = protocol.fold_nick(nick)
        target = next((m for m in room.members if protocol.fold_nick(m.nick) == folded), None)
        if target is not None:
            if room.members[target] is not None:
                self._out(target, frame, False)
            self._remove_member(target, room.name)
            self._deliver_one(room.name, protocol.presence(room.name, "leave", target.nick), Meta())

    def _settle(self, client: Client) -> bool:
        """Wait until the client's published chats are delivered; False if it is gone."""
        assert self._lock.locked()
        if client.pending and not self._settled.wait_for(lambda: not client.pending, SETTLE_TIMEOUT):
            log.warning("%s: %d chats not delivered after %.0f s", client.nick, client.pending, SETTLE_TIMEOUT,
                        extra=logs.context(nick=client.nick))
        return client.id in self._clients

    def _remove_member(self, client: Client, name: str) -> tuple[str, bool]:
        """Take the client out of a room; returns (room, True if the room is now empty here)."""
        assert self._lock.locked()
        client.rooms.discard(name)
        room = self._rooms.get(name)
        if room is None:
            return name, False
        room.members.pop(client, None)
        if room.members:
            return name, False
        del self._rooms[name]
        del self._names[bisect.bisect_left(self._names, name)]
        return name, True

    def _room(self, name: str) -> Room:
        """The room called `name`, made (and indexed) if it has no member yet."""
        assert self._lock.locked()
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name)
            bisect.insort(self._names, name)
        return room

    def _nicks_in(self, room: Room) -> list:
        """Nicks of the members whose join has its place in the stream, in join order."""
        return [m.nick for m, hold in room.members.items() if hold is None or hold.at is not None]

    def _origin(self, meta: Meta) -> Client | None:
        if meta.origin is None or meta.origin[0] != self.process_id:
            return None
        return self._clients.get(meta.origin[1])

    def _out(self, client: Client, frame: bytes, own: bool) -> None:
        """Write a frame to a client now, or add it to the batch written when the step ends;
        `own`: the client's own chat coming back (its acknowledgement, a reply)."""
        if self._batch is None:
            client.send(frame, own)
        elif client in self._batch:
            queued = self._batch[client]
            queued[0] += len(frame) if own else 0
            queued.append(frame)
        else:
            self._batch[client] = [len(frame) if own else 0, frame]

    def _flush_batch(self) -> int:
        """Write each client's frames of the step at once; returns how many frames (deliveries)."""
        batch, self._batch = self._batch, None
        if trace.ON:
            trace.fanout(batch or {})
        frames = 0
        for client, queued in (batch or {}).items():
            frames += len(queued) - 1
            client.send_mixed(queued[1] if len(queued) == 2 else b"".join(queued[1:]), queued[0])
        return frames
