"""The Redis engine: several roomchat processes behave as one server (redis-py, `--redis URL`).

Implements engine.Engine (its docstring states the contract). Redis assigns seqs and orders each
room's stream: one Lua script per call does INCR (the seq), XADD (the room's history, a stream
capped at `per_room`, entry id `0-<seq>`) and PUBLISH (the event, on the room's channel), so
publish order is seq order, the same on every process. Every process, the sender's included,
delivers only what comes back on its subscription, from one listener thread, in order.
Presence, nick and moderation events go through a script of their own that updates the room's
members (a kick or ban takes its target out) and publishes on the same channel, tagged with the
room's seq at that place (`Meta.at`).

Keys. Those of one room share a hash tag, `roomchat:{<room>}:...` (seq, hist, members, owners,
joins, topic, bans and mutes; channel `...:events`), so the scripts also run on Redis Cluster.
Nick claims (`roomchat:nick:<folded>`) and the other directory keys: engines/redis_directory.py. The
nick claims of this process get a TTL that the heartbeat refreshes. Each process keeps
`roomchat:proc:<id>` alive with the same TTL and lists its room memberships in
`roomchat:proc:<id>:rooms`; when a process dies (kill -9), the first survivor to notice
takes `roomchat:reap:<id>` and announces one presence leave per member.
DMs to a client of another process go to `roomchat:proc:<id>:dm` (`[client, event]`; `[client,
null]` asks it to let go of its nick for a token holder). The epoch is `roomchat:epoch`.

Gaps and faults. The listener knows the last seq it delivered per room: an event above it + 1
is preceded by the missing ones read from history, one at or below it is dropped; after a
reconnect every room is caught up from history. So nothing stored is lost or delivered twice.
While Redis is unreachable, `publish`, `announce`, `read` and the directory calls raise
Unavailable (the client gets `unavailable`); the listener reconnects with backoff. A call that
breaks mid-way may still have been carried out: such a chat is answered `unavailable` and can
arrive later as a normal chat event. Durability is Redis's own: with AOF and
`appendfsync everysec`, at most about a second of acknowledged chats is lost if Redis crashes.

Threads: connection threads call the methods below (redis-py's pool is thread-safe); the
listener thread reads the subscription and calls the hub (a request to let go of a nick runs
`Hub.evict` on a thread of its own, since evicting calls Redis); the heartbeat thread refreshes
keys and reaps dead processes. `_sub_lock` serializes (un)subscribing, `_lock` guards `_last`,
`_claims` and `_confirmed`. Lock order: `_sub_lock` -> Registry -> `_lock`.
"""

import contextlib
import logging
import threading
import time

import orjson
import redis

from chatserver.engines.base import EngineError, Meta, Unavailable, new_epoch
from chatserver.engines.redis_directory import RedisDirectory, room_key
from chatserver.engines.redis_scripts import ANNOUNCE, IF_OWNER_DELETE, IF_OWNER_EXPIRE, IF_OWNER_PREFIX_DELETE, PUBLISH
from chatserver.ops import metrics
from chatserver.rooms.moderation import removes_member

log = logging.getLogger("roomchat.redis")

PROCESS_TTL = 5.0  # seconds a dead process's nicks and members outlive it, at most (plus one heartbeat)
CLOSE_SERVICE_RESTART = 1012  # RFC 6455 7.4.1 (IANA registry): the service restarted
SUBSCRIBE_TIMEOUT = 5.0
RETRY_MAX_DELAY = 5.0
POOL_SIZE = 64  # Redis connections per process at most (the subscription holds one of them)
POOL_WAIT = 2.0  # seconds a thread waits for a free connection before Unavailable
READ_TIMEOUT = 2.0  # seconds for the rest of a reply that has begun to arrive on the subscription

class RedisEngine(RedisDirectory):
    """See the module docstring. Raises EngineError at start when Redis cannot be reached.
    The directory (nicks, members, DMs, room rules) is in engines/redis_directory.py."""

    cluster = True

    def __init__(self, url: str, per_room: int = 10000, *, process_ttl: float = PROCESS_TTL):
        self.location = f"Redis at {url}"
        self._per_room = per_room
        self._ttl_ms = int(process_ttl * 1000)
        self._heartbeat_every = process_ttl / 4
        # Connection threads share the pool. redis-py's default pool raises "Too many connections"
        # past 100 at once (a burst of joins did that); this one makes a thread wait for a free one.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_WAIT,
            socket_timeout=READ_TIMEOUT, socket_connect_timeout=2, health_check_interval=10,
        )
        self._redis = redis.Redis(connection_pool=pool)
        try:
            self._redis.ping()
            self._redis.set("roomchat:epoch", new_epoch(), nx=True)
            self.epoch = self._redis.get("roomchat:epoch").decode()
        except redis.RedisError as exc:
            raise EngineError(f"cannot reach Redis at {url}: {exc}") from None
        self._publish = self._redis.register_script(PUBLISH)
        self._announce = self._redis.register_script(ANNOUNCE)
        self._if_owner_delete = self._redis.register_script(IF_OWNER_DELETE)
        self._if_owner_expire = self._redis.register_script(IF_OWNER_EXPIRE)
        self._if_owner_prefix_delete = self._redis.register_script(IF_OWNER_PREFIX_DELETE)
        self.process_id = None  # the hub's, at start()
        self._hub = None
        self._lock = threading.Lock()
        self._sub_lock = threading.Lock()
        self._last: dict[str, int | None] = {}  # subscribed room -> last seq delivered here
        self._claims: dict[str, str] = {}  # nick key -> value, the nicks this process holds
        self._confirmed: dict[str, threading.Event] = {}  # subscribed channel -> set once Redis confirmed
        self._pubsub = None
        self._problem: str | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._listen, name="roomchat-redis-listener", daemon=True),
                         threading.Thread(target=self._heartbeat, name="roomchat-redis-heartbeat", daemon=True)]

    def start(self, hub) -> None:
        self._hub = hub
        self._metrics = metrics.of(hub)  # failed calls, subscription reconnects
        self.process_id = hub.process_id
        self._dm_channel = f"roomchat:proc:{self.process_id}:dm"
        self._beat()
        for thread in self._threads:
            thread.start()

    # -- streams ---------------------------------------------------------------------------------

    def publish(self, room: str, chats: list) -> None:
        args = [room_key(room, "events"), self._per_room, len(chats)]
        for sender, text, meta in chats:
            head = orjson.dumps({"type": "chat", "room": room, "from": sender, "text": text, "ts": time.time()})
            args += [head[:-1] + b',"seq":', b"}", _origin(meta)]
        self._call(self._publish, keys=[room_key(room, "seq"), room_key(room, "hist")], args=args)

    def announce(self, room: str, event: dict, meta: Meta) -> None:
        kind = "remove" if removes_member(event) else event.get("event", event["type"])  # join, leave, nick, ...
        nick = event.get("nick", "")
        owner = f"{meta.origin[0]}:{meta.origin[1]}"
        origin = orjson.dumps([*meta.origin, meta.reply_id, meta.change, meta.echo])[:-1] + b","  # and `at`
        keys = [room_key(room, part) for part in ("seq", "members", "owners", "joins")]
        args = [room_key(room, "events"), kind, nick, owner, orjson.dumps(event), origin, event.get("old", "")]
        count = self._call(self._announce, keys=keys, args=args)
        if kind not in ("join", "leave", "nick", "remove"):
            return  # a topic, a mute, a lifted ban: membership is as it was
        entry = f"{room}\n{nick}\n{owner}"
        try:
            pipe = self._redis.pipeline(transaction=False)
            if kind == "join":
                pipe.sadd(f"roomchat:proc:{meta.origin[0]}:rooms", entry)
            elif kind == "leave":
                pipe.srem(f"roomchat:proc:{meta.origin[0]}:rooms", entry)
            elif kind == "nick":
                pipe.srem(f"roomchat:proc:{meta.origin[0]}:rooms", f"{room}\n{event['old']}\n{owner}")
                pipe.sadd(f"roomchat:proc:{meta.origin[0]}:rooms", entry)
            pipe.zadd("roomchat:rooms", {room: count}) if count and count > 0 else pipe.zrem("roomchat:rooms", room)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("membership index for %s not updated: %s", room, exc)

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50,
             max_bytes: int | None = None) -> list:
        low = "-" if after is None else f"(0-{after}"
        high = "+" if before is None else f"(0-{before}"
        if after is not None:
            entries = self._call(self._redis.xrange, room_key(room, "hist"), low, high, count=limit)
        else:
            entries = self._call(self._redis.xrevrange, room_key(room, "hist"), high, low, count=limit)[::-1]
        return [orjson.loads(fields[b"e"]) for _id, fields in entries]

    def health(self) -> str | None:
        return self._problem

    def subscribe(self, room: str) -> None:
        """Subscribe to the room's channel (once) and wait until Redis confirms, also when another
        thread sent the SUBSCRIBE. Raises Unavailable."""
        channel = room_key(room, "events")
        with self._lock:
            wanted = room in self._last
            confirmed = self._confirmed.get(channel)
        if not wanted:
            with self._sub_lock:
                with self._lock:
                    send = room not in self._last
                    if send:
                        self._last[room] = None
                        self._confirmed[channel] = threading.Event()
                    confirmed = self._confirmed.get(channel)
                if send:  # without a subscription now, the listener subscribes to every wanted room as it reconnects
                    with contextlib.suppress(redis.RedisError, AttributeError):
                        self._pubsub.subscribe(channel)
        if confirmed is not None and not confirmed.wait(SUBSCRIBE_TIMEOUT):
            raise Unavailable("Redis did not confirm the subscription")

    def unsubscribe(self, room: str) -> None:
        """Unsubscribe once the room has no local member (unless one has joined again since)."""
        with self._sub_lock:
            if self._hub.has_room(room):
                return
            with self._lock:
                self._last.pop(room, None)
                self._confirmed.pop(room_key(room, "events"), None)
            with contextlib.suppress(redis.RedisError, AttributeError):
                self._pubsub.unsubscribe(room_key(room, "events"))

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(3)
        try:
            with self._lock:
                claims = list(self._claims.items())
            for key, value in claims:
                self._if_owner_delete(keys=[key], args=[value])
            self._redis.delete(*(f"roomchat:proc:{self.process_id}{part}" for part in ("", ":rooms", ":nicks")))
            self._redis.srem("roomchat:procs", self.process_id)
        except redis.RedisError:
            pass
        self._redis.close()

    # -- the listener thread ---------------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                if self._pubsub is None:
                    self._connect()
                    delay = 0.1
                self._receive()
            except (redis.RedisError, OSError) as exc:
                self._problem = f"Redis unreachable: {exc}"
                self._metrics.engine_errors.inc()
                log.error("Redis subscription lost (%s); reconnecting in %.1f s", exc, delay)
                self._drop_pubsub()
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_MAX_DELAY)
        self._drop_pubsub()

    def _connect(self) -> None:
        """Subscribe to this process's DM channel and every wanted room, then catch each room up.
        If Redis came back without its data (no persistence), the history is a new one: a new
        epoch, every room starts over, and every client is closed with 1012 to reload."""
        pubsub = self._redis.pubsub()
        self._check_epoch()
        with self._lock:
            rooms = list(self._last)
        pubsub.subscribe(self._dm_channel, *[room_key(r, "events") for r in rooms])
        self._pubsub = pubsub
        for room in rooms:
            with self._lock:
                last = self._last.get(room)
            if last is not None:
                self._hub.deliver(self._fill(room, last, None))
        if self._problem:
            self._metrics.engine_reconnects.inc()
            log.warning("Redis is back")
        self._problem = None

    def _check_epoch(self) -> None:
        """After a reconnect (ours, or redis-py's own) and at every heartbeat: if Redis lost its
        data, start a new history. Raises redis.RedisError."""
        if self._redis.get("roomchat:epoch") not in (None, self.epoch.encode()) or \
                self._redis.set("roomchat:epoch", new_epoch(), nx=True):
            self.epoch = self._redis.get("roomchat:epoch").decode()
            log.error("Redis lost its data: a new history (epoch %s); every client reconnects", self.epoch)
            with self._lock:
                self._last = dict.fromkeys(self._last)  # seqs start over: accept them from the first
            self._hub.close_all(CLOSE_SERVICE_RESTART, "the chat history was reset; reconnect")

    def _receive(self) -> None:
        pubsub = self._pubsub
        message = pubsub.get_message(timeout=0.5)
        items = []
        while message is not None and len(items) < 512:
            if message["type"] == "subscribe":
                with self._lock:
                    confirmed = self._confirmed.get(message["channel"].decode())
                if confirmed is not None:
                    confirmed.set()
            elif message["type"] == "message":
                channel = message["channel"].decode()
                if channel == self._dm_channel:
                    client, event = orjson.loads(message["data"])
                    if event is None:  # let go of a nick: off this thread, which must keep on listening
                        threading.Thread(target=self._hub.evict, args=(client,), daemon=True).start()
                    else:
                        self._hub.deliver_dm(client, event)
                else:
                    items += self._place(channel[len("roomchat:{"):-len("}:events")], message["data"])
            # Whatever has arrived already joins this batch. Not get_message(timeout=0): a reply
            # that has arrived in part is a timeout to redis-py, which then reconnects and drops
            # what was in flight (presence is not in history, so joins waited for JOIN_TIMEOUT).
            message = pubsub.get_message(timeout=READ_TIMEOUT) if pubsub.connection.can_read(timeout=0) else None
        if items:
            self._hub.deliver(items)

    def _place(self, room: str, data: bytes) -> list:
        """The items to deliver for one message: the event, after any it shows were missed."""
        head, _, body = data.partition(b"\n")
        event, origin = orjson.loads(body), orjson.loads(head)
        meta = _meta(origin)
        seq = event.get("seq")
        with self._lock:
            if room not in self._last:
                return []  # unsubscribed meanwhile
            last = self._last[room]
        position = seq if seq is not None else meta.at
        if last is not None and seq is not None and seq <= last:
            return []  # delivered already (a catch-up got there first)
        items = self._fill(room, last, position - 1 if seq is not None else position) if last is not None else []
        with self._lock:
            if room in self._last:
                self._last[room] = max(position, self._last[room] or 0)
        return [*items, (room, event, meta)]

    def _fill(self, room: str, last: int, upto: int | None) -> list:
        """Stored events after `last` (up to `upto`), as items, from the room's history."""
        if upto is not None and upto <= last:
            return []
        entries = self._redis.xrange(room_key(room, "hist"), f"(0-{last}", "+" if upto is None else f"0-{upto}")
        items = [(room, orjson.loads(f[b"e"]), _meta(orjson.loads(f[b"o"]))) for _id, f in entries]
        if items:
            log.warning("%s: %d events filled in from history", room, len(items))
            with self._lock:
                if room in self._last:
                    self._last[room] = max(items[-1][1]["seq"], self._last[room] or 0)
        return items

    def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    # -- the heartbeat thread ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._heartbeat_every):
            try:
                self._beat()
                self._check_epoch()
                self._reap()
            except redis.RedisError as exc:
                self._problem = f"Redis unreachable: {exc}"
                self._metrics.engine_errors.inc()
                log.warning("Redis heartbeat failed: %s", exc)

    def _beat(self) -> None:
        with self._lock:
            claims = list(self._claims.items())
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(f"roomchat:proc:{self.process_id}", 1, px=self._ttl_ms)
        pipe.sadd("roomchat:procs", self.process_id)
        for key, value in claims:
            self._if_owner_expire(keys=[key], args=[value, self._ttl_ms], client=pipe)
        pipe.execute()

    def _reap(self) -> None:
        """Announce the leaves of processes whose heartbeat key has expired (once, cluster-wide)."""
        for process in (p.decode() for p in self._redis.smembers("roomchat:procs")):
            if process == self.process_id or self._redis.exists(f"roomchat:proc:{process}"):
                continue
            if not self._redis.set(f"roomchat:reap:{process}", self.process_id, nx=True, ex=60):
                continue
            entries = self._redis.smembers(f"roomchat:proc:{process}:rooms")
            for entry in entries:
                room, nick, owner = entry.decode().split("\n")
                client = int(owner.split(":")[1])
                event = {"type": "presence", "room": room, "event": "leave", "nick": nick}
                self.announce(room, event, Meta(origin=(process, client)))
            for key in self._redis.smembers(f"roomchat:proc:{process}:nicks"):
                self._if_owner_prefix_delete(keys=[key], args=[f"{process}:"])
            self._redis.delete(f"roomchat:proc:{process}:rooms", f"roomchat:proc:{process}:nicks")
            self._redis.srem("roomchat:procs", process)
            log.warning("process %s is gone: %d members left their rooms", process, len(entries))


def _origin(meta: Meta) -> bytes:
    """Meta as JSON: [process, client, reply id, change, echo, at]."""
    process, client = meta.origin if meta.origin else (None, None)
    return orjson.dumps([process, client, meta.reply_id, meta.change, meta.echo, meta.at])


def _meta(origin: list) -> Meta:
    """Meta from its JSON (history written before `echo` existed has five elements)."""
    process, client, reply_id, change, *rest = origin
    echo, at = (rest[0], rest[1]) if len(rest) == 2 else (False, rest[0])
    origin = (process, client) if process is not None else None
    return Meta(origin=origin, reply_id=reply_id, at=at, change=change, echo=echo)
