"""The Registry: this process's clients, their nicks and their rooms, the requests that change
them, and the fan-out of each room's stream to its members here.

One copy of each fact, under one non-reentrant lock (`_lock`): `_clients` (id -> Client),
`_nicks` (folded nick -> Client: protocol.fold_nick, so look-alikes are one nick), `_rooms`
(room -> Room with its local members, and `_names`, the same rooms' names in sorted order,
for `rooms` to page through; a Client's `rooms` is the index of the same membership,
changed only with it), `_seqs` (room -> last chat seq delivered here), `_tokens` (resume token
-> client), `_batch` (frames of one `deliver` call, per client). Methods that take the lock are
public; `_helpers` assert it is held or say they take it. Under the lock we touch dicts and
call `Client.send()`, which never blocks; never an engine.

Requests (the handlers call one method each) are applied at once, under the lock. Only room
events wait for the engine: a chat is delivered when the engine hands it back stored, in the
room's stream order; `announce` puts presence, nick and moderation events into the same
stream. A client's next request waits until its own published writes are delivered: the
dispatcher calls `settle` before each request but a chat (and `reply` before each error), so
its replies keep the order of its requests, and a sender that outruns the disk is slowed down
alone. Ping, who, rooms, dm, nick and leave never wait for the disk.

Delivery. The engine calls `deliver`, `reject` and `deliver_dm` from its own threads (the
publishing one, the SQLite writer, the Redis listener). `deliver` is the broadcast: each event,
encoded once, is sent to every member of its room here, batched so each client gets one write
per call. A kick or ban takes its target out of the room where it is delivered (moderation.py),
followed by a presence `leave`.

Joining has a seam: a joiner is a member at once, but receives events only from its own join's
place in the stream (`Hold.at`, the room's seq there). Until `joined` is sent, events after that
place are held; `joined.history` is read from the engine up to that seq; then the held events
follow. So `joined` plus what follows is exactly the room's stream, with no gap and no repeat,
whichever engine and process.

Connecting and nicks. A new connection gets a free `guest-N`, or, with a token (identity.py),
the token's nick. That nick is reserved in the engine until the token expires, so nobody else
takes it, also while its holder is offline; and whoever has it when the holder arrives lets go
(`evict`): an older connection of the same holder is closed with 4002, anyone else is renamed to
a guest nick. Moderation (moderation.py): the rules live there and in the engine; `moderate`
applies a request.

One process. What crosses processes (nick claims, subscriptions, `who`, `rooms`, DMs elsewhere,
fencing) is the subclass cluster.ClusterRegistry's: it overrides the few hooks at the end of
this class, so the one-process path here has no cluster branches.
"""

import bisect
import contextlib
import itertools
import logging
import secrets
import threading
import time
import uuid
from typing import NamedTuple

from chatserver import protocol
from chatserver.engines.base import Meta, RulesChanged, Unavailable
from chatserver.errors import ChatError
from chatserver.ops import logs, trace
from chatserver.ops.metrics import Metrics
from chatserver.protocol import CloseCode, fold_nick
from chatserver.rooms import budgets, edits, moderation, posts
from chatserver.rooms.client import Client
from chatserver.rooms.identity import Identities
from chatserver.rooms.mailbox import Mailbox
from chatserver.rooms.marks import Marks
from chatserver.rooms.moderation import Moderation, removes_member
from chatserver.rooms.typing import Typing

SETTLE_TIMEOUT = 30.0  # seconds a request waits for its client's chats, at most: past the store's give-up
# time (fail_after 10 s + a busy timeout), so replies stay in order even when commits fail
JOIN_TIMEOUT = 10.0  # seconds a join waits for its place in the stream
REPLY_BUILDERS = 4  # history replies (joined, history, the HTTP API's read) read and encoded at once
SEARCHERS = 2  # searches scanned and encoded at once, in slots of their own (never a reply builder's)
SEARCH_WAIT = 10.0  # seconds a search waits for a slot, then `unavailable`: its connection's thread,
# waiting, reads nothing (not the pong either), so it must not wait near ping_interval + ping_timeout
RULE_LOOKS = 3  # a chat is published at most this often while the room's rules keep changing under it (Redis)
ROOM_ITEM_BYTES = len('{"room":"r","members":1},')  # the smallest entry of a `rooms` list

log = logging.getLogger("roomchat.registry")


class Hold:
    """A member between its join and its `joined`: `at` is None until its own join comes back
    from the stream (events before that are not its to see), then the room's seq there, and
    `frames` keeps what follows until `joined` is sent."""

    __slots__ = ("at", "frames", "members")

    def __init__(self, at: int | None = None, members: list | None = None):
        self.at = at
        self.frames: list[bytes] = []
        self.members = members  # nicks at the join's place in the stream (one process)


class Shared:
    """A room's frames in one `deliver` call that every member in `members` gets, joined once for
    all of them when the call ends; the members that got something else (`apart`: a sender's own
    copy) have their own queue from then on, and get each further frame there."""

    __slots__ = ("apart", "frames", "members")

    def __init__(self, members):
        self.frames: list[bytes] = []
        self.members: set = set(members)
        self.apart: list = []


class Room:
    __slots__ = ("members", "name")

    def __init__(self, name: str):
        self.name = name
        self.members: dict[Client, Hold | None] = {}  # join order; None = receiving live



def unavailable(exc: Unavailable) -> ChatError:
    return ChatError("unavailable", f"The server cannot do that right now ({exc}); try again shortly.")


def nick_taken(nick: str) -> ChatError:
    return ChatError("nick_taken", f"The nick {nick!r} is taken; choose another.")


class ChatRequest(NamedTuple):
    """One `chat` request as the handler checked it; `refused` is set when it was refused already."""

    room: str | None
    text: str | None
    reply_id: object = None
    refused: ChatError | None = None


class Registry:
    """Connected clients, their nicks and their rooms; every request a client can make, as one
    method each (the handlers call them); and delivery of each room's stream to its members.
    See the module docstring."""

    def __init__(self, engine, limits: dict, identities: Identities | None = None, metrics: Metrics | None = None,
                 *, typing_max_members: int = 100, offline_dms: int = 100):
        """Start `engine` with this registry as the one it delivers to. `limits`: Config.limits();
        `typing_max_members`, `offline_dms`: Config's (rooms/typing.py, rooms/mailbox.py)."""
        self._edit_window = limits.get("edit_window", protocol.EDIT_WINDOW)  # seconds (rooms/edits.py)
        self.metrics = metrics or Metrics()  # engines count into it too (metrics.of)
        self._engine = engine
        self._limits = limits
        self._identities = identities or Identities(None)
        self._moderation = Moderation(engine)
        self._marks = Marks(engine)  # read markers (rooms/marks.py)
        self._mailbox = Mailbox(engine, offline_dms)  # DMs that wait (rooms/mailbox.py)
        self._typing = Typing(self._moderation, typing_max_members)  # typing notices (rooms/typing.py)
        self._max_rooms = limits["max_rooms"]
        self._max_reply = limits["max_reply_bytes"]
        self._dm_backlog = limits["max_outbox_bytes"] // 2  # a recipient with more waiting is busy
        self.process_id = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._keys = itertools.count(1)  # Meta.key of each write (next() is atomic under the GIL)
        self._guests = 0
        # Replies built from history at once (`joined`, `history`, the HTTP API's read): each holds
        # up to about a reply's worth of rows and bytes while it is built, so 600 clients asking
        # together cost a few replies' memory. Taken by the asking connection's thread (an HTTP
        # API request's for a read) before the lock, never while holding it.
        self._builders = threading.BoundedSemaphore(REPLY_BUILDERS)
        # Searches at once, apart from the builders so that joins and history never wait behind a
        # search (on Redis one may take a round trip per 500 kept events, 2 s each at most). Each
        # holds up to a reply's worth of matches and bytes. Taken only by the searching
        # connection's own thread, before the lock, never while holding it; a search waits for a
        # slot up to SEARCH_WAIT seconds (each search ahead of it is bounded).
        self._searchers = threading.BoundedSemaphore(SEARCHERS)
        # One lock for everything below; see the module docstring for what it guards.
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # pending writes delivered, joins placed
        self._clients: dict[int, Client] = {}
        self._nicks: dict[str, Client] = {}
        self._rooms: dict[str, Room] = {}
        self._names: list[str] = []  # sorted keys of _rooms, changed with it (_room, _remove_member)
        self._seqs: dict[str, int] = engine.last_seqs() if hasattr(engine, "last_seqs") else {}
        self._batch: dict | None = None  # while set: frames per client, written once at the end
        self._shared: dict | None = None  # with it: room -> Shared, frames its members get alike
        self._tokens: dict[str, Client] = {}  # resume token -> the client it takes over
        self._posts = posts.Posts(self.process_id)  # chats posted over the HTTP API, waiting to be stored
        self._posters = posts.Posters()
        engine.start(self)

    # -- state ---------------------------------------------------------------------------------


    def stats(self) -> dict:
        with self._lock:
            return {"connections": len(self._clients), "rooms": len(self._rooms)}

    def close_all(self, code: int, reason: str) -> None:
        """Close every client's connection with `code` and forget it (the engine's history was
        reset: a resume must not carry a client's rooms and seqs into the new history). Runs on a
        thread of its own, since forgetting a client calls the engine."""
        with self._lock:
            clients = [(client, self._unresumable(client)) for client in self._clients.values()]
        for _client, conn in clients:
            conn.close(code, reason)

        def forget():
            for client, conn in clients:
                self.disconnect(client, conn)

        threading.Thread(target=forget, name="roomchat-reset", daemon=True).start()

    def drop(self, client: Client, code: int, reason: str) -> None:
        """Close a client's connection with `code` and forget it at once: no resume brings it back."""
        with self._lock:
            conn = self._unresumable(client)
        conn.close(code, reason)
        self.disconnect(client, conn)

    def has_room(self, name: str) -> bool:
        """True while a local client is in `name`, or a post to it waits (the Redis engine asks
        before unsubscribing)."""
        with self._lock:
            return name in self._rooms or self._posts.busy(name)

    # -- called by the engine ------------------------------------------------------------------

    def forget(self, names: list) -> set:
        """The engine forgot these rooms (their history is gone): drop their last seqs, except
        for rooms someone is in now; returns those."""
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
            self._batch, self._shared = {}, {}
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
                if sender is not None and meta.key in sender.pending:  # else answered already
                    sender.pending.discard(meta.key)
                    error = protocol.error(unavailable(Unavailable(reason)), meta.reply_id)
                    self.metrics.error(error)
                    sender.send(protocol.encode(error), own=True)
                self._posts.failed(meta, unavailable(Unavailable(reason)))
            self._settled.notify_all()

    def deliver_dm(self, client_id: int, event: dict) -> bool:
        """A DM for local client `client_id`; False if it is gone."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is not None:
                client.send(protocol.encode(event))
            return client is not None

    # -- helpers (lock held) -------------------------------------------------------------------

    def _deliver_one(self, name: str, event: dict, meta: Meta) -> None:
        """The broadcast: send one room event to every member of the room here. (Runs once per
        event on every process: the common steps are written out here, not called.)"""
        assert self._lock.locked()
        kind = event["type"]
        room = self._rooms.get(name)
        origin = meta.origin
        sender = self._clients.get(origin[1]) if origin is not None and origin[0] == self.process_id else None
        own_id = self._settle_write(name, event, meta, sender)
        if self._posts.waiters:  # a chat posted over the HTTP API: stored now
            self._posts.done(meta, event)
        if kind in ("ban", "mute"):  # the connection with that nick stays bound, renamed or not
            moderation.bind(self._nicks.get(protocol.fold_nick(event["nick"])), self._clients.values(), event)
        if room is None:
            return
        frame = protocol.encode(event)  # encoded once for every member
        own = frame if own_id is None else protocol.encode({**event, "id": own_id})
        # plain: nobody is joining the room (`Hold`) and it is not a nick change (which a member
        # may have heard of already): every member gets the event alike (but its sender)
        plain = kind != "nick" and not any(room.members.values())
        if plain and self._shared is not None and not trace.ON:  # usual: all alike
            self._share(room, frame, own, sender, kind == "chat" or meta.echo)
        else:
            self._unshare_room(name)  # a special case: each member's own queue, in its order
            for member in self._recipients(room, event, meta, sender, frame, own, plain):
                self._out(member, own if member is sender else frame, member is sender)  # queued; never blocks
            if trace.ON:
                trace.room_event(name, event, self._batch or {}, frame, own)
        if meta.echo and sender is not None and sender not in room.members:
            self._out(sender, own, True)  # taken out of the room since its request: it still gets its answer
        if kind in ("kick", "ban") and removes_member(event):
            self._drop_member(room, event["nick"], frame, meta)

    def _recipients(self, room: Room, event: dict, meta: Meta, sender, frame: bytes, own: bytes, plain: bool):
        """The members that get the event now, in join order (the sender gets `own`, its own copy
        with its request's id). Usually every member. The special cases: a joiner before its own
        join's place sees nothing of it, and a placed joiner keeps it until its `joined` is sent
        (`Hold`: kept here, not returned); the sender gets no copy of its own nick change or
        leave (answered directly); a member that heard of a nick change in another room skips it."""
        assert self._lock.locked()
        kind = event["type"]
        echo = kind == "chat" or meta.echo
        if plain:  # nobody joining, not a nick change: the common case
            return room.members if echo or sender not in room.members else [m for m in room.members if m is not sender]
        if kind == "presence" and sender is not None and event["event"] == "join":
            hold = room.members.get(sender)
            if hold is not None and hold.at is None:  # our own join: its place in the stream
                hold.at = self._seqs.get(room.name, 0) if meta.at is None else meta.at
                hold.members = self._nicks_in(room)
        now = []
        for member, hold in room.members.items():
            if (member is sender and not echo) or (hold is not None and hold.at is None):
                continue
            if kind == "nick":
                if meta.change in member.changes:
                    continue
                member.changes.append(meta.change)
            if hold is None:
                now.append(member)
            else:
                hold.frames.append(own if member is sender else frame)
        return now

    def _share(self, room: Room, frame: bytes, own: bytes, sender, echo: bool) -> None:
        """The broadcast of a plain event within a `deliver` call: the frame goes once into the
        room's shared list, which each member gets when the call ends; the sender, which gets its
        own copy, leaves the shared list for a queue of its own, keeping its order."""
        assert self._lock.locked()
        shared = self._shared.get(room.name)
        if shared is None:
            shared = self._shared[room.name] = Shared(room.members)
        if sender is not None and sender in shared.members:
            self._unshare(shared, sender)
        shared.frames.append(frame)
        for member in shared.apart:
            if member is not sender:
                self._out(member, frame, False)
        if echo and sender is not None and sender in room.members:
            self._out(sender, own, True)

    def _unshare(self, shared: Shared, member: Client) -> None:
        """`member` gets its own queue: what the shared list holds so far, then frame by frame."""
        shared.members.discard(member)
        shared.apart.append(member)
        for frame in shared.frames:
            self._out(member, frame, False)

    def _unshare_room(self, name: str) -> None:
        """Every member of the room's shared list gets its own queue (before a special case)."""
        shared = self._shared.pop(name, None) if self._shared is not None else None
        if shared is not None:
            for member in shared.members:
                for frame in shared.frames:
                    self._out(member, frame, False)

    def _settle_write(self, name: str, event: dict, meta: Meta, sender) -> object:
        """Book a delivered event against its sender's pending writes: the `id` its own copy
        carries, or None (no copy of its own, no id, or answered already: `unavailable`)."""
        assert self._lock.locked()
        if event["type"] in protocol.STORED_EVENTS:
            self._seqs[name] = event["seq"]
        if not (event["type"] == "chat" or meta.echo) or sender is None:
            return None
        if meta.key is not None and meta.key not in sender.pending:
            return None  # answered already: its copy is a plain room event
        sender.pending.discard(meta.key)
        return meta.reply_id

    def _drop_member(self, room: Room, nick: str, frame: bytes, meta: Meta) -> None:
        """A kick or ban (`frame`, with `meta`) of `nick` was delivered: take its target out if it
        is a member here, and give the others its presence `leave` right after, if it took a
        member out of the room (`_leaver`; a cluster engine keeps this process subscribed to a
        room it empties: harmless). A target still joining gets the event now (what it held is
        dropped with it)."""
        assert self._lock.locked()
        self._unshare_room(room.name)  # the target leaves: later events of the call are not its
        folded = protocol.fold_nick(nick)
        target = next((m for m in room.members if protocol.fold_nick(m.nick) == folded), None)
        if target is not None:
            if room.members[target] is not None:
                self._out(target, frame, False)
            self._remove_member(target, room.name)
        leaver = self._leaver(target, nick, meta)
        if leaver is not None:
            self._deliver_one(room.name, protocol.presence(room.name, "leave", leaver), Meta())

    def settle(self, client: Client) -> bool:
        """Wait until the client's published writes are delivered (or rejected): the dispatcher
        calls this before each request but chats, so replies keep the order of requests. False
        if the client is gone."""
        with self._lock:
            return self._settle(client)

    def _settle(self, client: Client) -> bool:
        """Wait until the client's published chats are delivered; False if it is gone."""
        assert self._lock.locked()
        if client.pending and not self._settled.wait_for(lambda: not client.pending, SETTLE_TIMEOUT):
            log.warning("%s: %d chats not delivered after %.0f s", client.nick, len(client.pending), SETTLE_TIMEOUT,
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
        """Write each client's frames of the step at once, and each room's shared frames (joined
        once) to the members that share them; returns how many frames (deliveries). A client may
        get a write of its own and one per room it shares: nothing is promised across rooms."""
        batch, self._batch = self._batch, None
        shared, self._shared = self._shared, None
        if trace.ON:
            trace.fanout(batch or {})
        frames = 0
        for client, queued in (batch or {}).items():
            frames += len(queued) - 1
            client.send_mixed(queued[1] if len(queued) == 2 else b"".join(queued[1:]), queued[0])
        for room in (shared or {}).values():
            if room.frames and room.members:
                data = room.frames[0] if len(room.frames) == 1 else b"".join(room.frames)
                frames += len(room.frames) * len(room.members)
                for client in room.members:
                    client.send_mixed(data, 0)
        return frames

    # -- connections and nicks --------------------------------------------------------------


    def connect(self, conn, limiter, identity=None, resume: str | None = None) -> Client:
        """Register a new connection and send its `welcome` (with a new resume token): under a
        free guest nick or, with an identity (a verified token), under the token's nick, reserved
        for it until the token expires and taken from whoever has it.

        A connection presenting the `resume` token of a client that is still here (on any process,
        with a cluster engine) takes that client over: same nick, same rooms, no presence flap;
        the client's old connection is closed with 4002. A client that had an identity is taken
        over only by a connection with an identity of the same token nick, which it holds from
        then on; one without an identity, only by a connection without one. Raises ChatError
        unavailable."""
        if identity is not None:
            self._ask_engine(lambda: self._engine.reserve_nick(identity.nick, identity.expires))
        marks = self._marks.welcome(identity)  # read before the lock: for `welcome.marks`
        token = secrets.token_urlsafe(24)  # the new resume token, kept (cluster) before it is given
        with self._lock:
            resumed = self._resumable(resume, identity)
        if resumed is not None:
            self._keep_session(resumed, token)
            with self._lock:
                if self._resumable(resume, identity) is not resumed:
                    gone, resumed = resumed, None  # gone meanwhile: the session just kept goes too
                else:
                    self._take_over(resumed, conn, identity)
                    self._welcome(resumed, resumed=True, token=token, marks=marks)
            if resumed is None and gone.id not in self._clients:  # (else another resume took it first)
                self._end_session(gone)
        client = resumed or Client(next(self._ids), conn, "", limiter, identity)
        if resumed is None and resume and self._resume_elsewhere(client, resume, identity, token):
            resumed = client
        if resumed is not None:
            if identity is not None:
                self._identities.watch(client, identity.expires)
                self._hand_waiting(client, identity)  # kept while it was taken for gone (its process dead, say)
            return client
        while True:
            nick = self._guest_nick(client) if identity is None else self._take(client, identity.nick)
            self._keep_session(client, token, nick)
            with self._lock:
                if self._nicks.setdefault(fold_nick(nick), client) is client:
                    client.nick = nick
                    self._clients[client.id] = client
                    self._welcome(client, resumed=False, token=token, marks=marks)
                    break
            self._release(client, nick)  # taken here meanwhile (by another connection of the same token)
        if identity is not None:
            self._identities.watch(client, identity.expires)
            self._hand_waiting(client, identity)  # DMs kept while it was offline, right after `welcome`
        return client

    def disconnect(self, client: Client, conn=None) -> None:
        """Forget a client; every room it was in gets a presence `leave`. Safe to call twice, from
        any thread (the second call finds it gone), and a no-op for `conn`, a connection the
        client was taken away from by a resume."""
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
            if emptied:
                self._emptied(name)
        self._end_session(client)  # before the nick is free: a resume then finds no session
        self._release(client, client.nick)
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
            self.drop(client, CloseCode.REPLACED, "replaced by a newer connection with the same token")
        else:
            self._rename(client, self._guest_nick(client), claimed=True)

    def evict_guest(self, client_id: int, nick: str) -> None:
        """A token holder posts as `nick` (the HTTP API), this local client's nick, and the client
        has no token: rename it to a guest nick, as `evict` does (the engine calls this for a
        client on another process). A client with a token is left alone (the same holder: a bot
        may post while its owner is connected), and one called otherwise by now too."""
        with self._lock:
            client = self._clients.get(client_id)
            guest = client is not None and client.identity is None and fold_nick(client.nick) == fold_nick(nick)
        if guest:
            self._rename(client, self._guest_nick(client), claimed=True)

    def _unseat_guest(self, nick: str) -> None:
        """Before a post as `nick` (a token's): a client without a token that has `nick` lets go
        of it (`evict_guest`), so the post's chats and that client's are never one author's
        (edit and delete compare nicks). Raises ChatError unavailable."""
        with self._lock:
            holder = self._nicks.get(fold_nick(nick))
        if holder is not None:
            self.evict_guest(holder.id, nick)

    # -- helpers (lock held) -------------------------------------------------------------------

    def _welcome(self, client: Client, resumed: bool, token: str, marks: dict | None = None) -> None:
        """The first frame on a connection: `welcome`, with the client's new resume `token` and
        its identity's read `marks` ({room: seq}; none: left out)."""
        assert self._lock.locked()
        self._forget_token(client)
        client.token = token
        self._tokens[client.token] = client
        event = protocol.welcome(client.nick, self._limits, self._engine.epoch)
        event["resume"] = client.token
        if resumed:
            event["resumed"] = True
            event["rooms"] = sorted(client.rooms)
        if client.identity is not None:
            event["auth"] = client.identity.summary()
        if marks:
            event["marks"] = marks
        client.send(protocol.encode(event))

    def _resumable(self, token: str | None, identity=None) -> Client | None:
        """The client of this process `token` names, or None when the token is unknown here
        (never given, or its client is gone) or the client may not be taken over with `identity`
        (`_same_holder`)."""
        assert self._lock.locked()
        client = self._tokens.get(token) if token else None
        if client is None or client.id not in self._clients or not _same_holder(client.identity, identity):
            return None
        return client

    def _take_over(self, client: Client, conn, identity=None) -> None:
        """Move `client` onto `conn` (its old connection closed with 4002), with `identity`'s
        newer token if any."""
        assert self._lock.locked()
        if identity is not None:
            client.identity = identity  # the newer token: its expiry and claims from now on
        old, client.conn = client.conn, conn
        old.close(CloseCode.REPLACED, "replaced by a new connection")
        log.info("%s resumed on a new connection; the old one is closed with %d", client.nick, CloseCode.REPLACED,
                 extra=logs.context(peer=getattr(conn, "peer", None), nick=client.nick, code=CloseCode.REPLACED))

    def _unresumable(self, client: Client):
        """Forget the client's resume token (so a reconnect cannot take it back); its connection."""
        assert self._lock.locked()
        self._forget_token(client)
        return client.conn

    def _forget_token(self, client: Client) -> None:
        assert self._lock.locked()
        if client.token is not None:
            self._tokens.pop(client.token, None)

    # -- helpers (lock not held) ---------------------------------------------------------------

    def _rename(self, client: Client, nick: str, reply_id=None, claimed: bool = False) -> None:
        """Give the client `nick` (claimed already, with `claimed`); peers sharing a room hear of it
        once. Raises ChatError nick_taken, unavailable."""
        folded = fold_nick(nick)
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            owner = self._nicks.get(folded)
            if owner is not None and owner is not client:
                raise nick_taken(nick)
            old = client.nick
        moving = folded != fold_nick(old)  # not a change of case: the claim changes hands
        if moving and not claimed and not self._claim(client, nick):
            raise nick_taken(nick)
        self._keep_session(client, nick=nick)  # before the reply: a resume elsewhere right after it gets `nick`
        event = {"type": "nick", "old": old, "nick": nick}
        with self._lock:
            lost = client.id not in self._clients or self._nicks.get(folded, client) is not client
            if not lost:
                del self._nicks[fold_nick(old)]
                self._nicks[folded] = client
                client.nick = nick
                if trace.ON:
                    trace.reply(client, event, len(protocol.encode(protocol.with_id(event, reply_id))))
                client.send(protocol.encode(protocol.with_id(event, reply_id)))
                log.info("nick %s -> %s", old, nick,  # the connect line named the guest nick
                         extra=logs.context(peer=getattr(client.conn, "peer", None), nick=nick))
                rooms = sorted(client.rooms)
            gone = client.id not in self._clients
        if lost:
            if moving:
                self._release(client, nick)
            if not gone:
                self._keep_session(client)  # its nick is the old one still
                raise nick_taken(nick)
            self._end_session(client)  # gone as it was kept: not kept again for nobody
            return
        if moving:
            self._release(client, old)
        change = uuid.uuid4().hex
        for name in rooms:
            self._announce_quietly(name, event, client, change)

    def _guest_nick(self, client: Client) -> str:
        """A free guest nick that is not reserved, claimed for `client`. Raises ChatError unavailable."""
        while True:
            with self._lock:
                nick = self._guest_name()
                if fold_nick(nick) in self._nicks:
                    continue
            if self._identities.is_reserved(nick) or self._reserved(nick):
                continue
            if self._claim(client, nick):
                return nick

    def _take(self, client: Client, nick: str) -> str:
        """Free `nick` for `client`, which holds a token for it: whoever has it lets go (`evict`).
        Returns the nick, claimed. Raises ChatError unavailable."""
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

    def _new_key(self) -> str:
        return str(next(self._keys))

    def _meta(self, client: Client, reply_id=None, change=None, key=None) -> Meta:
        return Meta(origin=(self.process_id, client.id), reply_id=reply_id, change=change, key=key)

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
            identity, rooms = client.identity, set(client.rooms)
        if identity is not None:
            if fold_nick(nick) != fold_nick(identity.nick):
                raise ChatError("forbidden", f"Your nick comes from your token: {identity.nick}.")
        elif self._identities.is_reserved(nick) or self._reserved(nick):
            raise ChatError("nick_reserved", f"The nick {nick!r} is reserved; choose another.")
        self._ask_engine(lambda: self._moderation.check_nick(nick, rooms))  # forbidden: banned from a room you are in
        self._rename(client, nick, reply_id)

    def authenticate(self, client: Client, token: str, reply_id=None, reveal: bool = False) -> None:
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
                self._rename(client, self._take(client, identity.nick), claimed=True)
            elif previous is None:
                self._keep_session(client)  # with its identity now: its resume token alone takes nothing
        except ChatError:
            with self._lock:
                client.identity = previous
            raise
        self._identities.watch(client, identity.expires)
        reply = {"type": "auth", **identity.summary(), **({"token": token} if reveal else {})}  # reveal: an invite's
        self.reply(client, protocol.with_id(reply, reply_id))
        if previous is None:
            self._hand_waiting(client, identity)  # DMs kept while the token's holder was offline

    def join(self, client: Client, name: str, after: int | None = None, reply_id=None) -> None:
        """Enter a room (or re-enter one, without presence). `joined` carries the members and the
        last 50 stored events or, with `after`, every one with a higher seq, within 1000 events and
        `max_reply_bytes` (else `truncated`), and the topic. Raises ChatError forbidden (banned, or not in the token's
        rooms), too_many_rooms, unavailable."""
        with self._lock:
            identity, nick = client.identity or client.invite, client.nick
        self._ask_engine(lambda: self._moderation.check_join(identity, nick, name, client))
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
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
                self._entered(name)
                self._engine.announce(name, protocol.presence(name, "join", nick), self._meta(client))
            except (Unavailable, ChatError) as exc:  # not in the stream (ChatError: banned meanwhile)
                with self._lock:
                    if room.members.get(client) is hold:
                        emptied = self._remove_member(client, name)[1]
                if emptied:
                    self._emptied(name)
                raise unavailable(exc) if isinstance(exc, Unavailable) else exc from None
        with self._lock:  # wait for our join's place in the stream (at once, but on Redis)
            if not self._settled.wait_for(lambda: hold.at is not None or room.members.get(client) is not hold,
                                          JOIN_TIMEOUT):
                log.warning("join of %s by %s not placed in %.0f s", name, client.nick, JOIN_TIMEOUT,
                            extra=logs.context(nick=client.nick, room=name))
                hold.at = self._seqs.get(name, 0)
            removed = room.members.get(client) is not hold  # kicked or banned before its place: it had the event
        if removed:
            self._refuse_removed(client, name, reply_id)
            return
        limit = protocol.JOIN_HISTORY if after is None else protocol.MAX_RESUME + 1
        with self._builders:
            try:
                history = self._engine.read(name, after=after, before=hold.at + 1, limit=limit,
                                            max_bytes=self._max_reply)
                members = self._members_at(name, hold)
                rules = self._engine.topic(name), self._engine.mode(name)
                mark = self._marks.of_room(client, client.identity, name)
                frame = self._joined(name, members, history, after is None, reply_id, rules, mark)
            except Unavailable as exc:
                frame, history = None, exc
            with self._lock:
                removed = room.members.get(client) is not hold
                emptied = False
                if not removed and frame is None:  # read failed after the join was placed: take it back
                    emptied = self._remove_member(client, name)[1]
                elif not removed:
                    room.members[client] = None
                    self.metrics.deliveries.inc(len(hold.frames))  # room events held back until `joined`
                    if trace.ON:
                        trace.reply(client, {"type": "joined", "members": members, "history": history,
                                             "room": name}, len(frame))
                    client.send(frame, own=True)
                    if hold.frames:  # the room's events since the join's place: others' traffic
                        client.send(b"".join(hold.frames))
        if removed:
            self._refuse_removed(client, name, reply_id)
        elif frame is None:  # one answer: `unavailable`, and the others see the join taken back
            self._announce_quietly(name, protocol.presence(name, "leave", client.nick), client)
            if emptied:
                self._emptied(name)
            raise unavailable(history)

    def leave(self, client: Client, name: str, reply_id=None) -> None:
        """Quit a room; the others see a presence `leave`. Raises ChatError not_in_room."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            if name not in client.rooms:
                raise ChatError("not_in_room", f"You are not in {name!r}.")
            emptied = self._remove_member(client, name)[1]
            client.send(protocol.encode(protocol.with_id({"type": "left", "room": name}, reply_id)), own=True)
        self._announce_quietly(name, protocol.presence(name, "leave", client.nick), client)
        if emptied:
            self._emptied(name)

    def chat_many(self, client: Client, requests: list) -> None:
        """Chats from one client that arrived together ([ChatRequest]), answered in order: runs
        of chats to one room are published together (one write per member when delivered); an
        error reply waits until the chats before it are delivered. Refusals, each a reply in its
        place: the handler's own, not_in_room, forbidden (muted), moderated, slow_mode, unavailable."""
        rules = {}  # room -> ChatError or ChatRule: read once per call and room, before the lock
        for request in requests:
            if request.refused is None and request.room not in rules:
                rules[request.room] = self._refusal(self._moderation.chat_rule, client, request.room)
        outcomes = []  # (request, ChatError or (nick, key)), decided under one hold of the lock
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            for request in requests:
                try:
                    if request.refused is not None:
                        raise request.refused
                    rule = rules[request.room]
                    if isinstance(rule, ChatError):
                        raise rule
                    if request.room not in client.rooms:
                        raise ChatError("not_in_room", f"Join {request.room!r} before sending to it.")
                    self._moderation.pace(client, request.room, rule.slow)  # slow_mode
                    outcomes.append((request, (client.nick, self._new_key())))
                except ChatError as exc:
                    outcomes.append((request, exc))
        run_room, run_nick, run = None, None, []
        for request, outcome in outcomes:
            if isinstance(outcome, ChatError):
                if run:
                    self._publish_run(client, run_room, run, rules[run_room])
                    run = []
                if logs.requests.isEnabledFor(logging.DEBUG):
                    logs.request(client, "chat", {"room": request.room}, outcome.code)
                self.reply(client, protocol.error(outcome, request.reply_id))
                continue
            nick, key = outcome
            if run and (request.room != run_room or nick != run_nick):
                self._publish_run(client, run_room, run, rules[run_room])
                run = []
            run_room, run_nick = request.room, nick
            run.append((nick, request.text, self._meta(client, request.reply_id, key=key)))
        if run:
            self._publish_run(client, run_room, run, rules[run_room])

    def dm(self, client: Client, nick: str, text: str, reply_id=None) -> None:
        """A direct message to a connected nick, or kept for a token holder who is offline
        (rooms/mailbox.py: the sender's copy says `stored`). Raises ChatError no_such_user,
        recipient_busy, unavailable."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            target = self._nicks.get(fold_nick(nick))
            event = protocol.dm_event(client.nick, target.nick if target else nick, text)
            if target is not None and target is not client:
                if target.backlog() > self._dm_backlog:
                    raise ChatError("recipient_busy", f"{target.nick} is not keeping up with what is sent to "
                                                      "them; try again later.")
                target.send(protocol.encode(event))
        if target is None:
            try:
                event = {**event, "to": self._dm_elsewhere(nick, event)}
            except ChatError as exc:
                if exc.code != "no_such_user":
                    raise
                try:
                    event = self._mailbox.keep(nick, event, exc)  # for a token holder who is offline
                except Unavailable as failure:
                    raise unavailable(failure) from None
                self._hand_to_newcomer(nick)
        self.reply(client, protocol.with_id(event, reply_id))

    def _hand_to_newcomer(self, nick: str) -> None:
        """After a DM was kept for `nick`: if its token holder connected here meanwhile (its
        connect handed out the DMs waiting before this one was kept), hand them now (a
        ClusterRegistry: on its process, wherever it is). The engine hands each kept DM out
        once, whichever of the two takes it first."""
        with self._lock:
            holder = self._nicks.get(fold_nick(nick))
            identity = holder.identity if holder is not None else None
        if identity is not None and fold_nick(identity.nick) == fold_nick(nick):
            self._hand_waiting(holder, identity)

    def list_rooms(self, client: Client, after: str | None = None, reply_id=None) -> None:
        """Rooms with members and their counts (all processes, with a cluster engine), by name,
        those after `after` only; `count` says how many there are in all, `truncated` that the
        list was cut to `max_reply_bytes`. Raises ChatError unavailable."""
        count, rooms = self._room_list(after, self._max_reply // ROOM_ITEM_BYTES + 1)
        reply = protocol.with_id({"type": "rooms", "count": count}, reply_id)
        items = [{"room": n, "members": m} for n, m in rooms]
        self._reply_frame(client, budgets.bounded_frame(reply, "rooms", items, self._max_reply)[0])

    def who(self, client: Client, name: str, reply_id=None) -> None:
        """The nicks in a room, in join order; [] for a room nobody is in. `count` says how many
        there are, `truncated` that the list was cut to `max_reply_bytes`. Raises ChatError unavailable."""
        members = self._members(name)
        reply = protocol.with_id({"type": "who", "room": name, "count": len(members)}, reply_id)
        self._reply_frame(client, budgets.bounded_frame(reply, "members", members, self._max_reply)[0])

    def history(self, client: Client, name: str, before=None, after=None, limit=50, reply_id=None) -> None:
        """Members page through a room's stored events (chats in their current state), oldest
        first. Raises ChatError not_in_room, unavailable."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
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

    def search(self, client: Client, name: str, query: str, before=None, limit=50, reply_id=None) -> None:
        """Members search a room's stored chats: `search` with the matches, newest first,
        cut to `max_reply_bytes` (`truncated`). At most SEARCHERS run at once; the rest wait for a
        slot on their own thread (never for a reply builder's), up to SEARCH_WAIT seconds.
        Raises ChatError not_in_room, unavailable (no slot within SEARCH_WAIT too)."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} to search it.")
            bound = self._seqs.get(name, 0) + 1  # as history: what is delivered already
        bound = bound if before is None else min(before, bound)
        words = protocol.search_words(query)
        if not self._searchers.acquire(timeout=SEARCH_WAIT):
            raise ChatError("unavailable", f"{SEARCHERS} searches are running and more wait; try again shortly.")
        try:
            found = self._ask_engine(lambda: self._engine.search(name, words, before=bound, limit=limit,
                                                                 max_bytes=self._max_reply))
            reply = protocol.with_id({"type": "search", "room": name, "q": query}, reply_id)
            frame = budgets.bounded_frame(reply, "messages", found, self._max_reply)[0]
        finally:
            self._searchers.release()
        self._reply_frame(client, frame)

    def post(self, identity, name: str, text: str) -> dict:
        """A chat by a token's holder that need not be connected (the HTTP API, rooms/posts.py):
        the room's rules for its nick apply as to a connection's chat; returns the chat event
        once stored and delivered to the room's members. Raises ChatError forbidden (outside the
        token's rooms, banned, muted), moderated, slow_mode, unavailable."""
        poster = self._posters.of(identity)
        self._ask_engine(lambda: self._engine.reserve_nick(identity.nick, identity.expires))  # as at connect
        self._unseat_guest(identity.nick)  # as at connect: edit and delete go by nick
        self._ask_engine(lambda: self._moderation.check_join(identity, poster.nick, name))
        rule = self._refusal(self._moderation.chat_rule, poster, name)
        if isinstance(rule, ChatError):
            raise rule
        with poster.lock:
            self._moderation.pace(poster, name, rule.slow)  # slow_mode
        post_id = next(self._ids)  # never a client's id: the delivered chat is nobody's own copy
        waiter = self._posts.start(post_id, name)
        try:
            self._ask_engine(lambda: self._entered(name))  # several processes: the chat comes back here too
            meta = Meta(origin=(self.process_id, post_id), key=self._new_key())
            refusal = self._publish(poster, name, [(poster.nick, text, meta)], rule, member=False)[0]
            if refusal is not None:
                raise refusal
            return waiter.wait()
        finally:
            self._posts.finish(post_id, name)
            if not self.has_room(name):
                self._emptied(name)

    def read_room(self, identity, name: str, before=None, after=None, limit=50) -> bytes:
        """A room's stored chat events for a token's holder that need not be a member (the HTTP
        API): the JSON object {"room", "messages"}, paged as `history` (oldest first, within
        max_reply_bytes, else "truncated"). The token's rooms and bans apply. Raises ChatError
        forbidden, unavailable."""
        self._ask_engine(lambda: self._moderation.check_join(identity, identity.nick, name))
        with self._builders:
            messages = self._ask_engine(lambda: self._engine.read(name, before=before, after=after, limit=limit,
                                                                  max_bytes=self._max_reply))
            return budgets.bounded_json({"room": name}, "messages", messages, self._max_reply, after is None)[0]

    def moderate(self, client: Client, action, reply_id=None) -> None:
        """An operator's topic, kick, ban or mute (moderation.Action): stored, then put into the
        room's stream (members see who did what). An operator in the room gets its answer there,
        at its place, as with a chat; one outside it gets the same event directly. Raises
        ChatError forbidden (not an operator of the room), no_such_user (a kick of a nick not in
        the room), unavailable."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            identity, actor = client.identity, client.nick
        self._moderation.check_operator(identity, action.room)
        target = None if action.nick is None else self._member_named(action.room, action.nick)
        if target is None and action.kind == "kick":
            raise ChatError("no_such_user", f"Nobody called {action.nick!r} is in {action.room!r}.")
        event = self._ask_engine(lambda: self._moderation.apply(action, actor, target or action.nick))
        key = self._new_key()
        with self._lock:
            echo = action.room in client.rooms
            if echo:
                client.pending.add(key)
        try:
            self._engine.announce(action.room, event, Meta((self.process_id, client.id), reply_id, echo=echo, key=key))
        except Unavailable as exc:
            with self._lock:
                client.pending.discard(key)
                self._settled.notify_all()
            raise unavailable(exc) from None
        if not echo:
            self.reply(client, protocol.with_id(event, reply_id))

    def amend(self, client: Client, kind: str, name: str, target: int, reply_id=None, **fields) -> None:
        """An edit, delete or react (`kind`) of the chat at seq `target` of room `name`, with the
        edit's `text` or the react's `emoji` (rooms/edits.py has the rules): stored with the room's
        next seq and answered at its place in the stream, like a chat. Raises ChatError
        not_in_room, no_such_message, forbidden, too_late, moderated, too_many_reactions, unavailable."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} before changing its chats.")
            nick, identity = client.nick, client.identity
        rule = self._refusal(self._moderation.chat_rule, client, name, True)  # fresh: AMEND does not check it
        if isinstance(rule, ChatError) and rule.code == "unavailable":
            raise rule
        chat = self._ask_engine(lambda: self._engine.message(name, target))
        operator = self._moderation.is_operator(identity, name)
        event = edits.check(kind, name, target, chat, nick, rule, operator, self._edit_window, **fields)
        key = self._new_key()
        with self._lock:
            if name not in client.rooms:  # kicked meanwhile
                raise ChatError("not_in_room", f"You are no longer in {name!r}.")
            client.pending.add(key)
        try:
            self._engine.amend(name, event, Meta((self.process_id, client.id), reply_id, echo=True, key=key))
        except Unavailable as exc:
            with self._lock:
                client.pending.discard(key)
                self._settled.notify_all()
            raise unavailable(exc) from None

    def typing(self, client: Client, name: str) -> None:
        """A typing notice: the room's other members get `typing` (rooms/typing.py); no reply.
        Dropped silently: within TYPING_INTERVAL of the client's last one there, from a muted
        member, in a moderated room (but from operators), in a room over `--typing-max-members`,
        or when the engine cannot take it. Raises ChatError not_in_room."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} before typing in it.")
            if not self._typing.due(client, name):
                return
            nick = client.nick
        try:
            if self._typing.allowed(client, name, lambda: self._room_size(name)):
                self._engine.announce(name, protocol.typing_event(name, nick), self._meta(client))
        except Unavailable as exc:
            log.debug("typing in %s dropped: %s", name, exc)

    def mark(self, client: Client, name: str, seq: int, reply_id=None) -> None:
        """Mark a room read up to `seq` (rooms/marks.py): the reply `mark` carries the mark now
        (never lower than before, at most the room's last seq). Raises ChatError not_in_room,
        unavailable."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            if name not in client.rooms:
                raise ChatError("not_in_room", f"Join {name!r} to mark it read.")
            last, identity = self._seqs.get(name, 0), client.identity
        marked = self._ask_engine(lambda: self._marks.set(client, identity, name, seq, last))
        self.reply(client, protocol.with_id(protocol.mark_event(name, marked), reply_id))

    # -- helpers (lock not held) ---------------------------------------------------------------

    def _hand_waiting(self, client: Client, identity) -> None:
        """Send the client the DMs kept for `identity` while it was offline (rooms/mailbox.py),
        oldest first; kept again if it went away meanwhile. A failure is logged: they stay kept."""
        try:
            waiting = self._mailbox.take(identity)
        except Unavailable as exc:
            log.warning("DMs waiting for %s not handed out: %s", identity.nick, exc)
            return
        if not waiting:
            return
        with self._lock:
            here = client.id in self._clients
            if here:
                # counted as its replies: however many, they never get it dropped as too slow
                client.send(b"".join(protocol.encode(event) for event in waiting), own=True)
        if not here:
            with contextlib.suppress(Unavailable):
                self._mailbox.put_back(identity, waiting)

    def _member_named(self, name: str, nick: str) -> str | None:
        """How the member of room `name` whose nick looks like `nick` spells it, or None."""
        return next((m for m in self._members(name) if fold_nick(m) == fold_nick(nick)), None)

    def _refuse_removed(self, client: Client, name: str, reply_id) -> None:
        """A join overtaken by a kick or ban of its nick (the client had the event): say so, once."""
        with self._lock:
            if client.id in self._clients:  # else disconnected meanwhile
                refused = ChatError("forbidden", f"You were removed from {name!r} while joining.")
                client.send(protocol.encode(protocol.error(refused, reply_id)), own=True)

    def _refusal(self, check, *args):
        """What `check(*args)` returns, or the ChatError it raises (Unavailable as `unavailable`)."""
        try:
            return check(*args)
        except Unavailable as exc:
            return unavailable(exc)
        except ChatError as exc:
            return exc

    def _joined(self, name: str, members: list, history: list, newest: bool, reply_id, rules: tuple,
                mark: int | None = None) -> bytes:
        """`rules`: (topic, (moderated, slow)); each shows only when it is not the default; `mark`:
        the reader's read marker in the room, when known."""
        reply = protocol.with_id({"type": "joined", "room": name, "members": members}, reply_id)
        if mark is not None:
            reply["mark"] = mark
        (topic, (moderated, slow)) = rules
        if topic:
            reply["topic"] = topic
        if moderated or slow:
            reply["mode"] = {"moderated": moderated, "slow": slow}
        if len(history) > protocol.MAX_RESUME:
            history, reply["truncated"] = history[: protocol.MAX_RESUME], True
        return budgets.bounded_frame(reply, "history", history, self._max_reply, newest)[0]

    def _publish_run(self, client: Client, name: str, run: list, rule) -> None:
        """A run of `client`'s chats to room `name` ([(nick, text, Meta)], one nick), let through
        by `rule` (a ChatRule): published, or each refused in its place. Their keys are pending
        from now until each is answered (a reply after them waits for them: `_settle`); so a
        refusal of them is a reply that waits for the chats before them."""
        with self._lock:
            if client.id not in self._clients:
                return  # gone meanwhile
            client.pending.update(meta.key for _nick, _text, meta in run)
        refusal, unstored = self._publish(client, name, run, rule)
        if refusal is not None:
            with self._lock:
                for _nick, _text, meta in unstored:
                    client.pending.discard(meta.key)
            for _nick, _text, meta in unstored:
                self.reply(client, protocol.error(refusal, meta.reply_id))

    def _publish(self, who, name: str, run: list, rule, member: bool = True) -> tuple:
        """Publish `run` under the mode `rule` (a ChatRule of `who`'s) was read with. When the
        engine finds the room's rules changed since (RulesChanged: a mute or mode in between),
        look again (fresh) and publish what they still let through, up to RULE_LOOKS times.
        Returns (None, []) or (the refusal, the chats not stored): the new rule's ChatError
        (slow_mode when slow mode began or grew as they were sent), or `unavailable`."""
        for _look in range(RULE_LOOKS):
            try:
                self._engine.publish(name, run, member=member, mode=rule.mode)
                return None, []
            except RulesChanged as exc:
                run, slow = exc.chats, rule.slow
                rule = self._refusal(self._moderation.chat_rule, who, name, True)
                if isinstance(rule, ChatError):
                    return rule, run
                if rule.slow > slow:  # slow mode began as they were sent: they were paced under none
                    return ChatError("slow_mode", f"{name!r} went into slow mode as you sent this: wait "
                                                  f"{rule.slow} s.", retry_after=rule.slow), run
            except Unavailable as exc:
                return unavailable(exc), run
        return unavailable(Unavailable("the room's rules kept changing; send it again")), run

    # -- what a cluster does differently (cluster.ClusterRegistry overrides these; lock not held) --

    def _guest_name(self) -> str:
        """The next guest nick to try (lock held: an exception in this section, as `_leaver`)."""
        self._guests += 1
        return f"guest-{self._guests}"

    def _leaver(self, target: Client | None, nick: str, meta: Meta) -> str | None:
        """The nick whose presence `leave` follows a kick or ban of `nick` (with `meta`), or None
        (no member was taken out): the target taken out here, one process holding every member
        (lock held: the other exception in this section)."""
        return None if target is None else target.nick

    def _claim(self, client: Client, nick: str) -> bool:
        """Take `nick` for `client` beyond this process: one process has nothing more to do."""
        return True

    def _release(self, client: Client, nick: str) -> None:
        """Give back what `_claim` took."""

    def _emptied(self, name: str) -> None:
        """The last local member left room `name`."""


    def _entered(self, name: str) -> None:
        """A local client is about to join room `name`."""

    def _room_size(self, name: str) -> int:
        """How many members room `name` has."""
        with self._lock:
            room = self._rooms.get(name)
            return len(room.members) if room else 0

    def _members(self, name: str) -> list:
        """The nicks in room `name`, in join order (those whose join has its place in the stream)."""
        with self._lock:
            room = self._rooms.get(name)
            return self._nicks_in(room) if room else []

    def _members_at(self, name: str, hold: Hold) -> list:
        """The members `joined` lists: those at the join's place in the stream."""
        return hold.members

    def _room_list(self, after: str | None, most: int) -> tuple[int, list]:
        """(how many rooms have members, [(room, members)] of at most `most` after `after`, by name)."""
        with self._lock:  # names are kept sorted: only a slice of them under the lock
            start = 0 if after is None else bisect.bisect_right(self._names, after)
            names, count = self._names[start:start + most], len(self._names)
        # read without the lock (each dict read is atomic): a room that emptied meanwhile is
        # left out, and a count may include a join not yet placed in the stream
        return count, [(n, len(r.members)) for n in names if (r := self._rooms.get(n)) is not None]

    def _resume_elsewhere(self, client: Client, resume: str, identity, token: str) -> bool:
        """Take over, for new `client` (not registered yet), the client of another process whose
        resume token `resume` is, and welcome it with `token`; False if there is none. Raises
        ChatError unavailable."""
        return False

    def _keep_session(self, client: Client, token: str | None = None, nick: str | None = None) -> None:
        """The client's resume token (`token`, about to be given) or nick (`nick`, or its own)
        changed (lock not held)."""

    def _end_session(self, client: Client) -> None:
        """The client left: its resume token is spent."""

    def _dm_elsewhere(self, nick: str, event: dict) -> str:
        """Deliver a DM to `nick`, not a client of this process: the nick as its holder spells it.
        Raises ChatError no_such_user, unavailable."""
        raise ChatError("no_such_user", f"Nobody called {nick!r} is connected.")


def _same_holder(held, presented) -> bool:
    """May a connection with identity `presented` (or None) take over a client with `held`? Only
    the same token nick takes over a token holder; only an anonymous connection, an anonymous one."""
    if held is None or presented is None:
        return held is None and presented is None
    return fold_nick(held.nick) == fold_nick(presented.nick)
