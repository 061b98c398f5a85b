"""The Redis engine: several roomchat processes behave as one server (redis-py, `--redis URL`).

Implements engines.base.ClusterEngine (its docstrings state the contract); the registry of each
process is a rooms.cluster.ClusterRegistry. Redis orders each room's stream: one Lua script per
call (redis_scripts.py) assigns the place, stores the event and PUBLISHes it on the room's
channel, so publish order is stream order, the same on every process. Every process, the
sender's included, delivers only what comes back on its subscription, from one listener thread.

Keys of a room share a hash tag, `roomchat:{<room>}:...`: `seq` (the counter of its stored
events), `hist` (a stream of its stored events: chats, edits, deletes, reactions; entry id
`0-<seq>`), `cur` (the current state of the chats edits, deletes and reactions changed, and what
is left of a deleted chat's edits, overriding `hist`: redis_scripts.AMEND), `log` (a stream of
its other events: presence, nick, topic, kick, ban, mute, mode; entry id `<seq there>-<n>`, with
its time), `members` and `owners` (who is in it, by which process and client), `joins`, `idem`
(idempotency keys), `topic`, `ban:<nick>`, `mute:<nick>`, `mode`; channel `...:events`. A
message on the channel is `<origin json>\\n<event json>`, or several such pairs, one per line, for
the chats one PUBLISH script stored. `transcript_of_redis` reads a room's
transcript (export) from `hist` and `log`. A typing notice is
only PUBLISHed on the channel (origin json without a place). Keys of an identity (read markers,
DMs that wait) share the hash tag `{id:<folded nick>}`, and those of the read markers of a resume
session without a token `{session:<marks id>}` (redis_personal.py).

Positions. Each event has a place in its room's stream: a chat (seq, 0), another event (the
room's seq when it happened, n + 1). The listener remembers the last place it delivered per room;
an event at or before it is dropped, a chat after a gap is preceded by what was missed, and after
a reconnect every room is caught up from `hist` and `log` merged by place. So presence, nick
changes and moderation converge like chats: nothing published while a link was down is missed.

Leases and fencing (DESIGN-NOTES 1). A process is alive while its lease in `roomchat:{leases}` (a
sorted set: lease id -> expiry, judged by Redis's clock) is renewed by its heartbeat, every
lease/4 seconds (on a Redis Cluster by a thread of its own, `_renew`). The lease id is
`<process>.<generation>`; owners of nicks and memberships are `<lease id>:<client>`. A process
whose lease expired more than a grace ago (as long as the lease) is reaped by the first other
process whose own last beat was on time (none is for a lease and a grace after no beat at all
could land: BEATS): its members are announced gone and its nick claims deleted. A reaped
process finds out at its next beat, takes a new generation and has the registry take everything
back (`ClusterRegistry.retake`). Nick claims
live NICK_LEASES leases, renewed at every beat; one that expired is taken again, one someone else
took is lost (`ClusterRegistry.lose_nick`), unless a resume elsewhere moved it (`moved_key`):
then the client is let go (`ClusterRegistry.let_go`, 4002) on that resume's message, or by the
heartbeat MOVE_GRACE later if none came (`_settle_unclaimed`). A chat from a member the others think gone is refused
by the publish script (fenced) and answered `unavailable`; the heartbeat then runs at once.

Faults. Every write a request makes carries an idempotency key (Meta.key). A write whose outcome
is unknown (timeout, broken link) is sent again, then settled with RESOLVE: written, or cancelled
for good. So `unavailable` means nothing was stored; a chat that cannot be settled before the
deadline waits, unanswered, until Redis answers (its sender's next request waits too). Leaves and
nick changes, which were already applied here, are retried in order by the heartbeat until Redis
takes them. A seq at or below one this process delivered means Redis lost acknowledged writes (an
AOF that lost its tail): a new epoch, and every client of every process is closed with 1012, as
when Redis comes back empty. One new epoch, however many threads and processes find the loss: each
asks NEXT_EPOCH to replace the epoch in which it read that seq, so the first starts the next and
the others take it, and one that has taken a later epoch since ignores what it read before.
A DM that no process receives (PUBLISH counts 0) is `no_such_user`.
Durability is Redis's own: with AOF and `appendfsync everysec`, about a second may be lost.
A Redis that restarted (its `run_id`), or on a Redis Cluster a master that restarted or a
replica that took over, may have lost acknowledged joins and nick claims that no seq shows: at
its next resubscription each process has the registry take its clients back (`_check_restart`).

Repair (a Redis Cluster). A room's script touches its own slot only: the room counts (ROOMS,
for `rooms`) and each process's membership index (what its reaper announces gone) are written
apart, right after it (`_apart`). Such a write may fail (its master down) or be lost (a
failover), so a thread of its own puts a slice of both right from the truth every beat
(`_repair`): the index from this process's local members, each count from its room's members;
REPAIR_ROOMS rooms a beat.

Threads: connection threads call the public methods (redis-py's pool is thread-safe); the
listener thread reads the subscription and calls the hub (a request to let go of a nick runs
`Registry.evict` on a thread of its own, since evicting calls Redis); the heartbeat thread renews the
lease and the claims, retries what is deferred, reaps, and calls `retake`/`lose_nick`/`let_go`
(`_settle_unclaimed`, with no lock held); on a Redis Cluster the repair thread calls `memberships`
and writes counts and this process's index (`_repair`), and the lease thread renews the lease
(`_renew`).
`_sub_lock` serializes (un)subscribing; `_lock` guards `epoch` (written under it; the registry
reads it as one attribute), `_last` (a place kept there is one of `epoch`), `_open`, `_rules_generation`,
`_claims`, `_unclaimed`, `_sessions`, `_confirmed`, `_leaving`, `_deferred`, `_holding`, `_unretaken`, `_lease` and
`_generation`. Lock order: `_sub_lock` -> Registry -> `_lock`.
"""

import collections
import contextlib
import functools
import hashlib
import logging
import secrets
import select
import threading
import time
import urllib.parse
from typing import NamedTuple

import orjson
import redis
from redis.utils import check_protocol_version

from chatserver import protocol
from chatserver.engines.base import (
    EPHEMERAL_TYPES,
    EngineError,
    Meta,
    RulesChanged,
    Session,
    Unavailable,
    amended,
    matches,
    new_epoch,
    without_text,
)
from chatserver.engines.redis_personal import RedisPersonal, session_marks_keys
from chatserver.engines.redis_quotas import RedisQuotas
from chatserver.engines.redis_runner import HandoutPool, NotSent, ScriptRunner
from chatserver.engines.redis_scripts import (
    AMEND,
    ANNOUNCE,
    BEAT,
    BEATS,
    CHAT_RULES,
    CLAIM,
    CLAIM_MOVE,
    COUNT,
    EPOCH,
    FORGET,
    IF_OWNER_DELETE,
    IF_OWNER_PREFIX_DELETE,
    IF_VALUE_SET,
    LEASES,
    NEXT_EPOCH,
    OOM_OK,
    OWNER_MOVE,
    PUBLISH,
    QUOTA_TURN,
    REAP,
    REAPING,
    RECOUNT,
    REFRESH,
    RESERVE,
    RESOLVE,
    ROOM_VERSIONS,
    ROOMS,
    TOUCH,
    USE_INVITE,
    floor_key,
    oom_ok,
    room_key,
)
from chatserver.errors import ChatError
from chatserver.ops import metrics
from chatserver.protocol import MAX_MARKS, fold_nick
from chatserver.rooms.moderation import KINDS as MODERATION
from chatserver.rooms.moderation import removes_member

log = logging.getLogger("roomchat.redis")

LEASE = 5.0  # seconds a process's lease lasts without a beat (--redis-lease); beats every LEASE / 4
NICK_LEASES = 6  # a nick claim lasts this many leases without a beat: far past a stall others survive
SUBSCRIBE_TIMEOUT = 5.0
RETRY_MAX_DELAY = 5.0
POOL_SIZE = 64  # Redis connections per process at most (the subscription holds one of them)
POOL_WAIT = 2.0  # seconds a thread waits for a free connection before Unavailable
READ_TIMEOUT = 2.0  # seconds for a reply, and for the rest of a reply begun on the subscription
# seconds a local client whose nick claim a resume elsewhere moved (`moved_key`) is kept waiting
# for that resume's "moved" message while that resume's client holds the claim (sooner let go once
# it is nobody's or someone else's); past it the heartbeat lets it go all the same (4002). After
# its claim moved, a take-over is a few calls (the session, two per room, the message), each
# answered or failing the take-over within POOL_WAIT + READ_TIMEOUT: one that goes through takes
# milliseconds, one cut off fails at its first call that times out. Five READ_TIMEOUTs are far
# past both; a take-over slower still loses only the rooms it has yet to move (the let-go's
# leaves find the old owner there: the room sees a leave), never a nick.
MOVE_GRACE = 5 * READ_TIMEOUT
# A resume that finds its connection's rename on its way through the rooms (find_session) waits
# for it up to RENAME_WAIT seconds (a round trip per room), looking again every RENAME_POLL.
RENAME_WAIT, RENAME_POLL = READ_TIMEOUT, 0.01
SETTLE_TRIES = 3  # a write whose outcome is unknown is sent again this many times, then settled
AMEND_TRIES = 10  # an edit, delete or react is read and tried again this often while its chat keeps changing
DEFERRED_MAX = 100_000  # leaves and nick changes waiting for Redis at most; the oldest go first
OPEN_NICKS = 10_000  # nicks per room known unmuted (chat_rules' cache) at most
TAKE_POLL = 0.05  # seconds between claims while a nick's holder lets go of it
SEARCH_PAGE = 500  # stored events a search reads per round trip (engines/redis.py `search`)
RECEIVE_BATCH = 512  # items the listener reads at most before it delivers them (it may go past by one message)
# rooms with local members, and rooms `rooms` lists, whose index entries and counts a beat puts
# right on a Redis Cluster, at most (each; `_repair`): R rooms take ceil(R / REPAIR_ROOMS) beats
REPAIR_ROOMS = 100
# the call may or may not have been carried out (a RedisClusterException: a Redis Cluster's slots
# moving or uncovered, its retries spent; it is no RedisError)
UNKNOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException)
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)  # anything a call to Redis raises


def nick_key(nick: str) -> str:
    return f"roomchat:nick:{fold_nick(nick)}"


def moved_key(owner: str) -> str:
    """Where a resume marks that it is taking client `owner` (`<lease>:<client>`) away from its
    process: that process's heartbeat, finding the client's nick claim gone, then knows it was
    moved (its let-go is on its way, or comes from that heartbeat after MOVE_GRACE), not lost
    while the process was cut off."""
    return f"roomchat:moved:{owner}"


def session_key(token: str) -> str:
    """Where a resume token's session is kept: named by the token's hash (Redis never holds a
    token that could be used as one). Its value: `<owner>\n<nick>\n<identity>\n<marks id>`
    (identity: the folded token nick, or ""; marks id: where the read markers of a session
    without a token are, redis_personal.session_marks_keys)."""
    return f"roomchat:session:{hashlib.sha256(token.encode()).hexdigest()[:32]}"


def dm_channel(process: str) -> str:
    """The pub/sub channel of process `process`'s DMs and requests from other processes (let go
    of a nick, of a client resumed elsewhere, of a guest's nick; hand out kept DMs)."""
    return f"roomchat:proc:{process}:dm"


def _holder(claim: bytes) -> tuple:
    """(process id, client id, the nick as spelled) from a nick claim's value, `lease:client:nick`."""
    lease, client, spelled = claim.decode().split(":", 2)
    return lease.split(".")[0], int(client), spelled


def new_marks_id() -> str:
    """A new resume session's marks id (random: redis_personal.session_marks_keys)."""
    return secrets.token_hex(8)


class Kept(NamedTuple):
    """A local client's resume session as this process keeps it: its `key` and stored `value`
    (session_key), its `marks` id, and whether its marks keys may exist (`marked`: renewed with it)."""

    key: str
    value: bytes
    marks: str
    marked: bool = False


class Unclaimed(NamedTuple):
    """A local client whose nick claim a beat found lost: the claim's `key`, the `marker` a resume
    elsewhere sets when it moves the claim (moved_key); once that marker was read, `mover` (the
    claim's prefix while that resume's client holds it, `<owner>:`) and `deadline` (the
    time.monotonic() past which the client is let go, MOVE_GRACE on)."""

    key: str
    marker: str
    mover: str | None = None
    deadline: float = 0.0


def shown(url: str) -> str:
    """`url` (redis://[USER:PASSWORD@]HOST:PORT/DB) as printed and logged: its password as `***`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = urllib.parse.unquote(parts.username or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


class RedisEngine(RedisPersonal):
    """See the module docstring (read markers and DMs that wait: engines/redis_personal.py).
    Raises EngineError at start when Redis cannot be reached."""

    cluster = True

    def __init__(self, url: str, per_room: int = 10000, *, lease: float = LEASE, resume_window: float = 40.0,
                 quotas: RedisQuotas | None = None, move_grace: float | None = None):
        """`resume_window`: seconds a resume session outlives its process's last beat
        (ping_interval + ping_timeout: how long the issuing process would keep the client);
        `quotas`: on the history kept in Redis (redis_quotas.py), none by default; `move_grace`:
        seconds a client moved away by a resume elsewhere waits here for its let-go (by default
        MOVE_GRACE, or less with a short lease: over before the moved claim would expire, were
        the resume's process to die holding it)."""
        self.location = f"Redis at {shown(url)}"
        self._per_room = per_room
        self._lease_ms = int(lease * 1000)
        self._nick_ms = self._lease_ms * NICK_LEASES
        self._beat_every = lease / 4
        self._session_ms = max(int(resume_window * 1000), 3 * int(self._beat_every * 1000))
        # a beat finds the claim moved a beat after it moved at most, and lets go a beat after the grace
        self._move_grace = min(MOVE_GRACE, self._nick_ms / 1000 - 2 * self._beat_every) if move_grace is None \
            else move_grace
        self.rename_wait = RENAME_WAIT  # seconds (find_session); a test may set its own
        try:
            probe = redis.Redis.from_url(url, socket_timeout=READ_TIMEOUT, socket_connect_timeout=2)
            try:
                server = probe.info("server")
                self.sharded = _kind_of(url, server, probe) == "cluster"
            finally:
                probe.close()
            self._runner = None
            if self.sharded:  # redis-py's own cluster client: it finds the nodes and follows MOVED
                # a blocking pool per node, as below: a burst of connections waits for a free one
                self._redis = redis.RedisCluster.from_url(
                    url, socket_timeout=READ_TIMEOUT, socket_connect_timeout=2, max_connections=POOL_SIZE,
                    connection_pool_class=HandoutPool, timeout=POOL_WAIT)
            else:
                # Connection threads share the pool. redis-py's default pool raises "Too many
                # connections" past 100 at once (a burst of joins did that); this one makes a
                # thread wait for a free one.
                pool = HandoutPool.from_url(
                    url, max_connections=POOL_SIZE, timeout=POOL_WAIT,
                    socket_timeout=READ_TIMEOUT, socket_connect_timeout=2, health_check_interval=10,
                )
                self._redis = redis.Redis(connection_pool=pool)
                self._runner = ScriptRunner(pool, POOL_SIZE, POOL_WAIT)  # the writes: see redis_runner.py
            self._redis.set(EPOCH, new_epoch(), nx=True)
            self.epoch = self._redis.get(EPOCH).decode()
            flags = int(server["redis_version"].split(".")[0]) >= 7  # allow-oom
        except REDIS_ERRORS as exc:
            hint = (" (a Redis with a password: redis://:PASSWORD@HOST:PORT/DB, or USER:PASSWORD for an ACL user)"
                    if isinstance(exc, redis.AuthenticationError) else "")
            raise EngineError(f"cannot reach Redis at {shown(url)}: {exc}{hint}") from None
        if self.sharded:  # a room's events on sharded pub/sub: only its shard carries them
            sharded = {"publish": PUBLISH.replace("'PUBLISH'", "'SPUBLISH'"),
                       "announce": ANNOUNCE.replace("'PUBLISH'", "'SPUBLISH'"),
                       "amend": AMEND.replace("'PUBLISH'", "'SPUBLISH'")}
        else:
            sharded = {"publish": PUBLISH, "announce": ANNOUNCE, "amend": AMEND}
        self._scripts = {name: self._redis.register_script(oom_ok(text) if flags and name in OOM_OK else text)
                         for name, text in (
            ("publish", sharded["publish"]), ("announce", sharded["announce"]), ("amend", sharded["amend"]),
            ("announce_oom", sharded["announce"]), ("resolve", RESOLVE),
            ("beat", BEAT), ("reap", REAP), ("claim", CLAIM), ("refresh", REFRESH),
            ("if_owner_delete", IF_OWNER_DELETE), ("if_owner_prefix_delete", IF_OWNER_PREFIX_DELETE),
            ("if_value_set", IF_VALUE_SET), ("next_epoch", NEXT_EPOCH),
            ("reserve", RESERVE), ("claim_move", CLAIM_MOVE), ("owner_move", OWNER_MOVE), ("count", COUNT),
            ("recount", RECOUNT),
            ("forget", FORGET), ("touch", TOUCH), ("quota_turn", QUOTA_TURN), ("use_invite", USE_INVITE),
            ("chat_rules", CHAT_RULES))}
        floor_key("")  # its table of hash tags, made now rather than on a first chat
        self._quotas = quotas or RedisQuotas()
        self.process_id = None  # the hub's, at start()
        self._hub = None
        self._metrics = None
        self._lock = threading.Lock()
        self._sub_lock = threading.Lock()
        self._last: dict[str, tuple | None] = {}  # subscribed room -> last place delivered here
        self._open: dict[str, set] = {}  # subscribed room -> folded nicks read unmuted, the mode the default
        self._rules_generation = 0  # counts the drops of `_open`: a look that raced one keeps nothing
        self._claims: dict[str, tuple] = {}  # nick key -> (value, client id): the nicks this process holds
        # local client id -> Unclaimed: the clients whose claim a beat found lost, until settled
        # (_settle_unclaimed). Written and read by whichever thread beats (the heartbeat's; start's
        # first), under `_lock`; Redis and the hub are called without it.
        self._unclaimed: dict[int, Unclaimed] = {}
        self._sessions: dict[int, Kept] = {}  # client id -> its resume session
        self._sessions_kept = 0.0  # time.monotonic() when the sessions' windows were last renewed
        self._confirmed: dict[str, threading.Event] = {}  # subscribed channel -> set once Redis confirmed
        # channels this process unsubscribed from (a Redis Cluster) whose confirmation has yet to
        # come: any other SUNSUBSCRIBE is a node's word that it no longer serves the channel
        self._leaving: set[str] = set()
        # set by redis-py when its map of a Redis Cluster's slots changed: the listener looks
        # whether a subscription is on a node that no longer serves its channel (one Event)
        self._slots_moved = threading.Event()
        # {node name: socket} of each shard's subscription as the listener last knew it (the
        # listener's alone): another socket means redis-py connected it anew and subscribed again
        # by itself, without a catch-up (`_check_sockets`)
        self._sockets: dict = {}
        self._deferred: collections.deque = collections.deque()  # writes to retry, in order
        self._generation = 0
        self._lease = ""  # "<process>.<generation>"
        self._registered = False
        # a new lease was taken, or Redis restarted: the registry has yet to take its clients back
        # (set by the heartbeat and the listener, cleared by the heartbeat as a retake begins; one
        # bool: atomic under the GIL)
        self._retaking = False
        self._runs: dict | None = None  # run_id per master at the last subscription (listener thread only)
        # where the repair goes on (Redis Cluster; repair thread only): the last local room it
        # looked at (None: from the first), and its ZSCAN cursor in ROOMS
        self._repair_after: str | None = None
        self._repair_cursor = 0
        # True while the registry takes its clients back (`retake`, on the heartbeat thread): leaves,
        # nick changes and nick releases wait in `_deferred` meanwhile, so that the retake's joins
        # and claims, made from a look at the clients taken before, never undo them; a client's join
        # of a room whose leave waits there is refused (`announce`). Leaves and nick changes wait
        # only for the clients the retake has yet to take back (`_unretaken`: every client until
        # the retake has looked at them, `retaking`), and only until it has (`retaken`: carried
        # out then, in order); those of the others go through: a resume elsewhere must not find
        # a client in a room it left (find_session reads its rooms from Redis). Nick releases and
        # session ends wait until the retake is over. Under `_lock`.
        self._holding = False
        # local clients the retake going on has yet to take back; None: all of them (not looked yet)
        self._unretaken: set[int] | None = None
        self._beat_ok = 0.0  # time.monotonic() of the last beat that went through
        self._pubsub = None
        self._problem: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # beat now (a write was fenced)
        self._threads = [threading.Thread(target=self._listen, name="roomchat-redis-listener", daemon=True),
                         threading.Thread(target=self._heartbeat, name="roomchat-redis-heartbeat", daemon=True)]
        if self.sharded:
            self._threads += [threading.Thread(target=self._repairs, name="roomchat-redis-repair", daemon=True),
                              threading.Thread(target=self._renew, name="roomchat-redis-lease", daemon=True)]

    def start(self, hub) -> None:
        self._hub = hub
        self._metrics = metrics.of(hub)  # failed calls, subscription reconnects
        self.process_id = hub.process_id
        self._lease = f"{self.process_id}.{self._generation}"
        self._dm_channel = dm_channel(self.process_id)
        self._beat()
        for thread in self._threads:
            thread.start()

    # -- streams ---------------------------------------------------------------------------------

    def publish(self, room: str, chats: list, member: bool = True, mode: tuple | None = None) -> None:
        """Raises Unavailable when nothing was stored, RulesChanged (the script checks `mode` and
        the sender's mute as it writes); chats it cannot settle stay unanswered until the
        heartbeat settles them (their senders are answered then)."""
        with self._lock:
            last, epoch = self._last.get(room), self.epoch
        args = [room_key(room, "events"), self._per_room, len(chats), last[0] if last else 0,
                self._owner(chats[0][2]) if member else "",  # "": no member to fence (an HTTP API post)
                "-" if mode is None else _mode_value(*mode)]
        for sender, text, meta in chats:
            body = orjson.dumps(protocol.chat_event(room, sender, text, 0))  # the script writes its seq in
            cut = body.index(b'"seq":0') + 6
            args += [sender, body[:cut], body[cut + 1:], _origin(meta), self._key(meta)]
        keys = [*_publish_keys(room), room_key(room, f"mute:{fold_nick(chats[0][0])}")]
        self._quotas.touch(room)
        try:
            result = self._write(self._scripts["publish"], keys, args)
        except _Unsettled:
            for _sender, _text, meta in chats:
                self._defer(("settle", room, meta))
            return
        if result[0] == -1:
            self._history_replaced(f"{room}: Redis's seq {result[1]} is below one delivered here", epoch)
            raise Unavailable("the chat history was reset")
        refused = [(room, None, meta) for (_s, _t, meta), r in zip(chats, result[1:], strict=True) if r in (-2, -3)]
        if refused:
            if any(r == -2 for r in result[1:]):
                self._wake.set()  # fenced: this process may have lost its lease
            self._hub.reject(refused, "this server is reconnecting to the others")
        changed = [chat for chat, r in zip(chats, result[1:], strict=True) if r == -4]
        if changed:
            self._drop_rules(room)
            raise RulesChanged(changed)

    def amend(self, room: str, event: dict, meta: Meta) -> None:
        """One AMEND script (redis_scripts.py): the event into `hist` with the room's next seq and
        its chat's new state into `cur`, if `cur` still holds what was read (else read again, up
        to AMEND_TRIES times). Raises Unavailable when nothing was stored; one it cannot settle
        stays unanswered until the heartbeat settles it, as a chat."""
        with self._lock:
            last, epoch = self._last.get(room), self.epoch
        keys = [room_key(room, "seq"), room_key(room, "hist"), room_key(room, "idem"), room_key(room, "owners"),
                floor_key(room), room_key(room, "cur")]
        for _attempt in range(AMEND_TRIES):
            member, current, edits, in_hist = self._call(self._target, room, event["target"])
            chat = current if current is not None and current["type"] == "chat" else None
            changed = chat if chat is None else amended(chat, event)
            stored, new, gone = event, b"", []
            if changed is not chat:
                new = orjson.dumps(changed)
                if event["type"] == "delete":  # the texts of its edits go too
                    gone = self._call(self._edits_without_text, room, edits)
                    edits = []
            elif event["type"] == "edit":  # its chat is deleted or gone: the text is not kept
                stored = without_text(event)
            body = orjson.dumps(stored)  # the script writes its seq in
            cut = body.index(b'"seq":0') + 6
            args = [room_key(room, "events"), self._per_room, last[0] if last else 0, self._owner(meta),
                    event["from"], event["target"], member, int(in_hist and not member), " ".join(map(str, edits)),
                    new, int(event["type"] == "edit" and bool(new)), body[:cut], body[cut + 1:], _origin(meta),
                    self._key(meta), int(event["type"] == "delete" and bool(new)), *[x for pair in gone for x in pair]]
            self._quotas.touch(room)
            try:
                result = self._write(self._scripts["amend"], keys, args)
            except _Unsettled:
                self._defer(("settle", room, meta))
                return
            if result[0] == -5:
                continue  # the chat changed since it was read
            if result[0] == -1:
                self._history_replaced(f"{room}: Redis's seq {result[1]} is below one delivered here", epoch)
                raise Unavailable("the chat history was reset")
            if result[0] < 0:
                if result[0] == -2:
                    self._wake.set()  # fenced: this process may have lost its lease
                self._hub.reject([(room, None, meta)], "this server is reconnecting to the others")
            return
        raise Unavailable("that chat kept changing; try again")

    def message(self, room: str, seq: int) -> dict | None:
        return self._call(self._target, room, seq)[1]

    def _target(self, room: str, seq: int) -> tuple:
        """The event at `seq` as it is kept: (its member in `cur` or b"", the event in its current
        state or None, the seqs of its edits, True if it was read from `hist`). A state in `cur`
        below the room's window (`_window`) is of a chat the window let go: its event is None
        (`no_such_message`, as history no longer shows it), its member kept for AMEND's compare.
        Raises REDIS_ERRORS."""
        pipe = self._redis.pipeline(transaction=not self.sharded)
        pipe.zrangebyscore(room_key(room, "cur"), seq, seq)
        pipe.xrange(room_key(room, "hist"), f"0-{seq}", f"0-{seq}")
        self._window(pipe, room)
        kept, entries, *window = pipe.execute()
        if kept:
            edits, _, body = kept[0].partition(b"\n")
            event = orjson.loads(body) if seq >= self._oldest(*window) else None
            return kept[0], event, [int(x) for x in edits.split()], False
        if entries:
            return b"", orjson.loads(entries[0][1][b"e"]), [], True
        return b"", None, [], False

    def _edits_without_text(self, room: str, seqs: list) -> list:
        """[(seq, json of the edit without its text)] of the edits at `seqs` still in `hist`. Raises REDIS_ERRORS."""
        if not seqs:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for seq in seqs:
            pipe.xrange(room_key(room, "hist"), f"0-{seq}", f"0-{seq}")
        return [(seq, orjson.dumps(without_text(orjson.loads(found[0][1][b"e"]))))
                for seq, found in zip(seqs, pipe.execute(), strict=True) if found]

    def _stored(self, room: str, low: int | None, high: int | None, count: int | None = None,
                newest: bool = False) -> list:
        """[(event, origin json or None)] of the stored events with low < seq < high (None: no
        bound), oldest first, each in its current state (`cur` over `hist`): the first `count`, or
        with `newest` the last. A state in `cur` below the room's window (`_oldest`: its last
        `per_room` seqs, and all that `hist` holds) is of a chat the window let go: left out (AMEND
        trims `cur` to that window, but only at the next edit). Raises REDIS_ERRORS."""
        return self._page(room, low, high, count, newest)[0]

    def _page(self, room: str, low: int | None, high: int | None, count: int | None,
              newest: bool) -> tuple[list, int | None]:
        """`_stored`'s list, and the seq of the oldest event `hist` holds (None: it holds none), from
        the same round trip. Raises REDIS_ERRORS."""
        ids = ("-" if low is None else f"(0-{low}", "+" if high is None else f"(0-{high}")
        scores = ("-inf" if low is None else f"({low}", "+inf" if high is None else f"({high}")
        page = {} if count is None else {"start": 0, "num": count}
        pipe = self._redis.pipeline(transaction=not self.sharded)
        if newest:
            pipe.xrevrange(room_key(room, "hist"), ids[1], ids[0], count=count)
            pipe.zrevrangebyscore(room_key(room, "cur"), scores[1], scores[0], **page)
        else:
            pipe.xrange(room_key(room, "hist"), ids[0], ids[1], count=count)
            pipe.zrangebyscore(room_key(room, "cur"), scores[0], scores[1], **page)
        self._window(pipe, room)
        entries, kept, *window = pipe.execute()
        oldest = self._oldest(*window)
        found = {_seq_of(entry_id): [orjson.loads(fields[b"e"]), fields[b"o"]] for entry_id, fields in entries}
        for member in kept:
            event = orjson.loads(member.partition(b"\n")[2])
            if event["seq"] >= oldest:
                found.setdefault(event["seq"], [None, None])[0] = event
        seqs = sorted(found)
        if count is not None:
            seqs = seqs[-count:] if newest else seqs[:count]
        return [found[seq] for seq in seqs], (_seq_of(window[0][0][0]) if window[0] else None)

    @staticmethod
    def _window(pipe, room: str) -> None:
        """Queue on `pipe` what `_oldest` needs of `room`: its first entry in `hist`, its counter."""
        pipe.xrange(room_key(room, "hist"), "-", "+", count=1)
        pipe.get(room_key(room, "seq"))

    def _oldest(self, first: list, counter: bytes | None) -> int:
        """The room's oldest seq in its window, from `_window`'s replies: the window AMEND trims
        `cur` to (redis_scripts.AMEND), its last `per_room` seqs and all that `hist` holds."""
        oldest = int(counter or 0) - self._per_room + 1
        return min(oldest, _seq_of(first[0][0])) if first else oldest

    def announce(self, room: str, event: dict, meta: Meta) -> None:
        """Raises Unavailable for a join or moderation event that was not put in the stream (a
        join of a banned nick: ChatError forbidden); leaves and nick changes, applied here
        already, are retried until Redis takes them. A typing notice (EPHEMERAL_TYPES) is only
        published: no place in the stream, not logged, never retried."""
        if event["type"] in EPHEMERAL_TYPES:
            self._call(self._pub, room_key(room, "events"), _origin(meta) + b"\n" + orjson.dumps(event))
            return
        if event["type"] == "nick" or event.get("event") == "leave":
            owner = self._owner(meta)  # before `_lock`: it takes the lock itself (not re-entrant)
            with self._lock:
                if self._waits(meta):  # keep their order behind those waiting (or the retake)
                    self._deferred.append(("announce", room, event, meta, owner))
                    return
            try:
                self._announce(room, event, meta, owner, self._index())
            except (Unavailable, _Unsettled):
                self._defer(("announce", room, event, meta, owner))
            return
        with self._lock:  # it would overtake a leave or nick change waiting for Redis; during a
            # retake only a join of a room its client left meanwhile (that leave, written last,
            # would take it out again): the rest goes through
            if self._deferred and (not self._holding or (event.get("event") == "join" and self._held_in(room, meta))):
                raise Unavailable("catching up with Redis")
        return self._join(room, event, meta)

    def _held_in(self, room: str, meta: Meta, kind: str | None = None) -> bool:
        """True if a leave or nick change of `meta`'s client in `room` (with `kind` "leave" or
        "nick", one of that kind) waits in `_deferred` (`_lock` held)."""
        return any(item[0] == "announce" and item[1] == room and item[3].origin == meta.origin
                   and kind in (None, item[2].get("event", item[2]["type"])) for item in self._deferred)

    def _waits(self, meta: Meta) -> bool:
        """True if a leave or nick change of `meta`'s client must wait in `_deferred` (`_lock` held):
        while anything waits there; during a retake, while the retake has yet to take the client
        back or something of its own waits (`_holding`)."""
        if not self._holding:
            return bool(self._deferred)
        return (meta.origin is None or self._unretaken is None or meta.origin[1] in self._unretaken
                or any(_origin_of(item) == meta.origin for item in self._deferred))

    def rejoin(self, room: str, event: dict, meta: Meta) -> None:
        """`retake`'s join of a member back into a room: as announce, without waiting for writes
        deferred before (the beat carried them out first; what fails still waits, and a join
        refused for it would only delay the retake); none if the member's leave of the room waits
        (it left since the retake looked). Raises Unavailable, ChatError forbidden."""
        with self._lock:
            if self._held_in(room, meta, "leave"):
                return
        return self._join(room, event, meta)

    def retaking(self, client_ids) -> None:
        """`retake` looked at its clients (`client_ids`): until now every client's leaves and nick
        changes waited, from now on only theirs, each until it is taken back (`retaken`); those
        of a client that connected since go through (the retake will not touch it)."""
        with self._lock:
            self._unretaken = set(client_ids)

    def retaken(self, client_id: int) -> None:
        """`retake` has taken local client `client_id` back (its nick and rooms): its leaves and
        nick changes waiting for that are carried out now, in order (until one fails: it and those
        after it wait for the heartbeat), and its later ones no longer wait for the retake's end.
        Nick releases and session ends wait for that end still (they are no room's)."""
        origin = (self.process_id, client_id)
        with self._lock:
            if self._unretaken is not None:
                self._unretaken.discard(client_id)
        while True:
            with self._lock:
                item = next((item for item in self._deferred if _origin_of(item) == origin), None)
            if item is None:
                return
            try:
                self._do(item)
            except (*REDIS_ERRORS, Unavailable, _Unsettled):
                return
            with self._lock, contextlib.suppress(ValueError):  # (gone if DEFERRED_MAX dropped it)
                self._deferred.remove(item)

    def _join(self, room: str, event: dict, meta: Meta) -> None:
        try:
            result = self._announce(room, event, meta, self._owner(meta), self._index())
        except _Unsettled:
            self._defer(("cancel", room, meta))  # a late copy can no longer take effect
            if event.get("event") == "join":  # and if it did take effect, it is taken back
                self._defer(("announce", room, protocol.presence(room, "leave", event["nick"]), Meta(meta.origin),
                             self._owner(meta)))
            raise Unavailable("Redis did not answer") from None
        if result[0] == -4:
            raise ChatError("forbidden", f"You are banned from {room!r}.")
        if result[0] == -3:
            raise Unavailable("Redis did not answer in time")

    def _announce(self, room: str, event: dict, meta: Meta, owner: str, index: str) -> list:
        kind = "remove" if removes_member(event) else event.get("event", event["type"])  # join, leave, nick, ...
        nick = event.get("nick", "")
        keys = [room_key(room, part) for part in ("seq", "log", "idem", "members", "owners", "joins")]
        keys += [room_key(room, f"ban:{fold_nick(nick)}"), floor_key(room), room_key(room, "ver")]
        if not self.sharded:  # one Redis: the count and the index change in the same call
            keys += [ROOMS, index]
        args = [room_key(room, "events"), kind, nick, owner, orjson.dumps(event), _origin(meta)[:-1],
                event.get("old", ""), self._key(meta), self._per_room, room, "0" if self.sharded else "1",
                orjson.dumps(protocol.presence(room, "leave", nick)), _NO_ORIGIN]
        if kind == "join":
            self._quotas.touch(room)
        entries = (f"{room}\n{nick}\n{owner}", f"{room}\n{event.get('old', '')}\n{owner}")
        if self.sharded and kind in ("join", "nick"):
            self._apart(self._redis.sadd, index, entries[0])  # before: the index may hold more, never less
        # what takes members out (or renames them) also runs at maxmemory: nobody is kept in a room
        script = self._scripts["announce_oom" if kind in ("leave", "remove", "nick") else "announce"]
        result = self._write(script, keys, args)
        if self.sharded and result[0] == 1 and kind in ("join", "leave", "remove", "nick"):
            if kind != "join":
                self._apart(self._redis.srem, index, entries[kind == "nick"])
            self._apart(self._scripts["count"], keys=[ROOMS, ROOM_VERSIONS], args=[room, result[1], result[2]])
        return result

    def _pub(self, channel: str, data: bytes) -> int:
        """PUBLISH (SPUBLISH on a Redis Cluster: the channel's shard only); how many received it.
        Raises REDIS_ERRORS."""
        return (self._redis.spublish if self.sharded else self._redis.publish)(channel, data)

    def _apart(self, command, *args, **kwargs) -> None:
        """On a Redis Cluster: a write to another slot after (or before) a room's script; a failure
        is logged (the repair thread's `_repair` puts the count and the index right)."""
        try:
            command(*args, **kwargs)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            log.warning("Redis Cluster: a room count or index not updated: %s", exc)

    def read(self, room: str, before: int | None = None, after: int | None = None, limit: int = 50,
             max_bytes: int | None = None) -> list:
        return [event for event, _origin in self._call(self._stored, room, after, before, limit, after is None)]

    def search(self, room: str, words: list, before: int | None = None, limit: int = 50,
               max_bytes: int | None = None) -> list:
        """As engines.base.Engine.search: a scan of the room's history in Redis, newest first,
        on the connection's thread that asked (no lock of the registry or the engine held). Each
        page is one round trip, `_stored` (XREVRANGE `hist` COUNT SEARCH_PAGE with the `cur`
        states of the same seqs: chats in their current text, as `read` gives them); the scan
        stops at `limit` matches, once their texts passed `max_bytes` (one more: the caller sees
        there was more), or once it read the oldest event `hist` holds. So a search costs at most
        ceil(retained / SEARCH_PAGE) round trips, `retained` being the room's kept events: `hist`,
        capped at --history-per-room, and the `cur` states of the chats deleted among the last
        --history-per-room seqs (20 round trips for a full room at the default 10000, without
        deletes; 1 for a room of 500 events). A chat no longer in `hist` (deleted, or trimmed by
        the quotas with only its `cur` state left) is never found. On a Redis Cluster a page is
        one call to the room's node (its keys share one hash slot). Raises Unavailable (Redis
        unreachable or timed out)."""
        return self._call(self._search, room, list(dict.fromkeys(words)), before, limit, max_bytes)

    def _search(self, room: str, words: list, before: int | None, limit: int, max_bytes: int | None) -> list:
        """The body of `search` (words given once each). Raises REDIS_ERRORS."""
        found, total, high = [], 0, before
        while True:
            page, first = self._page(room, None, high, SEARCH_PAGE, newest=True)
            for event, origin in reversed(page):  # origin None: only `cur` holds it (deleted, or trimmed)
                text = event.get("text") if event["type"] == "chat" and origin is not None else None
                if text and matches(words, text):
                    found.append(event)
                    total += len(text.encode())
                    if len(found) >= limit or (max_bytes is not None and total > max_bytes):
                        return found
            # done once `hist` has nothing older: what `cur` alone holds below is never found
            if len(page) < SEARCH_PAGE or first is None or page[0][0]["seq"] <= first:
                return found
            high = page[0][0]["seq"]

    def health(self) -> str | None:
        return self._problem

    def subscribe(self, room: str) -> None:
        """Subscribe to the room's channel (once) and wait until Redis confirms, also when another
        thread sent the SUBSCRIBE. Raises Unavailable.

        The room is looked up under `_sub_lock` even when it is subscribed already: an
        `unsubscribe` that found the room unwanted (its last post or member gone) holds that lock
        until it has let go, and a subscription seen before that would be gone after it."""
        channel = room_key(room, "events")
        with self._sub_lock:
            with self._lock:
                send = room not in self._last
                if send:
                    self._last[room] = None
                    self._confirmed[channel] = threading.Event()
                confirmed = self._confirmed.get(channel)
            if send:  # without a subscription now, the listener subscribes to every wanted room as it reconnects
                with contextlib.suppress(*REDIS_ERRORS, AttributeError):
                    self._subscribe(self._pubsub, channel)
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
                if self.sharded:
                    self._leaving.add(room_key(room, "events"))
            self._drop_rules(room)
            with contextlib.suppress(*REDIS_ERRORS, AttributeError):
                if self.sharded:
                    self._pubsub.sunsubscribe(room_key(room, "events"))
                else:
                    self._pubsub.unsubscribe(room_key(room, "events"))

    def _subscribe(self, pubsub, *channels: str) -> None:
        """SUBSCRIBE, or SSUBSCRIBE on a Redis Cluster (one channel at a time: each its slot's).
        Raises REDIS_ERRORS."""
        if self.sharded:
            for channel in channels:
                pubsub.ssubscribe(channel)
        else:
            pubsub.subscribe(*channels)

    def close(self) -> None:
        """Stop the threads, then leave as a reaper would: the members still here are announced
        gone and the nicks given back, and only then the lease (should any of it fail, the lease
        runs out and another process's reaper does it all again)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._wake_listener()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(3)
        try:
            self._run_deferred()
            with self._lock:
                lease = self._lease
            self._clean_up(lease)
            self._redis.zrem(LEASES, lease)
        except (*REDIS_ERRORS, Unavailable, _Unsettled):  # what is left, the reaper's once the lease ran out
            pass
        if self._runner is not None:
            self._runner.close()
        self._redis.close()

    def _wake_listener(self) -> None:
        """End the listener's wait for a message (up to 0.5 s: `_receive_into`) as close begins:
        the answer to unsubscribing from this process's DM channel wakes it, and it finds `_stop`
        set. Redis unreachable, or no subscription (the listener reconnecting, or never started):
        nothing to do."""
        if self._pubsub is None:
            return
        with self._sub_lock:
            with self._lock:
                if self.sharded:  # the SUNSUBSCRIBE's answer is this process's own (`_unsubscribed`)
                    self._leaving.add(self._dm_channel)
            with contextlib.suppress(*REDIS_ERRORS, AttributeError):
                if self.sharded:
                    self._pubsub.sunsubscribe(self._dm_channel)
                else:
                    self._pubsub.unsubscribe(self._dm_channel)

    # -- the directory: nicks, members, rooms, DMs ---------------------------------------------

    def claim_nick(self, nick: str, client_id: int, retake: bool = False) -> bool:
        """Take `nick` for local client `client_id`; False if someone holds it. With `retake`, a
        claim of this process's earlier lease counts as free. Raises Unavailable."""
        key, (value, _) = nick_key(nick), self._claim_value(nick, client_id)
        prefix = f"{self.process_id}." if retake else ""
        if not self._call(self._scripts["claim"], keys=[key], args=[value, self._nick_ms, prefix]):
            return False
        with self._lock:
            self._claims[key] = (value, client_id)
            index = f"roomchat:proc:{self._lease}:nicks"
        with contextlib.suppress(*REDIS_ERRORS):
            self._redis.sadd(index, key)
        return True

    def take_nick(self, nick: str, client_id: int, timeout: float) -> bool:
        """Claim `nick` for the holder of its token, asking the connection that has it to let go
        (its process renames or replaces it: Registry.evict). False if it is still held after `timeout`
        seconds (a holder on a dead process lets go when it is reaped). Raises Unavailable."""
        deadline = time.monotonic() + timeout
        asked = None
        while not self.claim_nick(nick, client_id):
            held = self._call(self._redis.get, nick_key(nick))
            if held is not None and held != asked:
                process, client, _ = _holder(held)
                self._call(self._pub, dm_channel(process), orjson.dumps([client, None]))
                asked = held
            if time.monotonic() >= deadline:
                return False
            time.sleep(TAKE_POLL)
        return True

    def unseat_guest(self, nick: str) -> None:
        """Ask the process of the connection holding `nick`, if any, to rename it should it have
        no token (Registry.evict_guest): a post with that nick's token is on its way. Raises
        Unavailable."""
        held = self._call(self._redis.get, nick_key(nick))
        if held is not None:
            process, client, _ = _holder(held)
            self._call(self._pub, dm_channel(process), orjson.dumps([client, None, "guest", nick]))

    def release_nick(self, nick: str, client_id: int) -> None:
        """Give `nick` back if this client still holds it (retried by the heartbeat; while the
        registry takes its clients back, after that: the retake may claim it again meanwhile)."""
        key = nick_key(nick)
        with self._lock:
            if self._holding:
                self._deferred.append(("release_nick", nick, client_id))
                return
            claim = self._claims.get(key)
            if claim is None or claim[1] != client_id:
                return
            del self._claims[key]
        self._defer(("release", key, claim[0]), first_try=True)

    def members(self, room: str) -> list:
        return [m.decode() for m in self._call(self._redis.zrange, room_key(room, "members"), 0, -1)]

    def rooms(self) -> list:
        rooms = self._call(self._redis.zrange, ROOMS, 0, -1, withscores=True)
        return sorted(({"room": r.decode(), "members": int(n)} for r, n in rooms), key=lambda r: r["room"])

    def send_dm(self, nick: str, event: dict) -> str | None:
        """Route a DM to the process holding `nick`; its spelling, or None if nobody has it or its
        process is gone (nobody received it). Raises Unavailable."""
        owner = self._call(self._redis.get, nick_key(nick))
        if owner is None:
            return None
        process, client, spelled = _holder(owner)
        event = {**event, "to": spelled}
        if process == self.process_id:
            return spelled if self._hub.deliver_dm(client, event) else None
        received = self._call(self._pub, dm_channel(process), orjson.dumps([client, event]))
        return spelled if received else None

    def hand_kept_dms(self, nick: str) -> None:
        """DMs were just kept for `nick` (keep_dm): if a client of another process holds `nick`
        now, ask that process to hand them out (`Registry.hand_waiting` there). A holder here is
        left to the registry; a message lost on the way leaves them kept. Raises Unavailable."""
        owner = self._call(self._redis.get, nick_key(nick))
        if owner is None:
            return
        process, client, _ = _holder(owner)
        if process != self.process_id:
            self._call(self._pub, dm_channel(process), orjson.dumps([client, None, "dms"]))

    # -- resume sessions: a resume token works on every process ----------------------------------

    def keep_session(self, client_id: int, token: str, nick: str, identity: str) -> None:
        """Keep the client's session under `token` (in place of its earlier one, with the same
        marks), for the resume window past this process's last beat. A failure is logged: the
        token then works here only."""
        owner = self._owner(Meta((self.process_id, client_id)))
        with self._lock:
            earlier = self._sessions.get(client_id)
            marks = earlier.marks if earlier is not None else new_marks_id()
            kept = Kept(session_key(token), f"{owner}\n{nick}\n{identity}\n{marks}".encode(), marks,
                        earlier is not None and earlier.marked)
            self._sessions[client_id] = kept
        try:
            if earlier is not None and earlier.key != kept.key:
                self._scripts["if_owner_delete"](keys=[earlier.key], args=[earlier.value])
            self._redis.set(kept.key, kept.value, px=self._session_ms)
            for key in session_marks_keys(marks) if kept.marked else ():  # they live as long as it
                self._redis.pexpire(key, self._session_ms)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            log.warning("resume session of client %d not kept in Redis: %s", client_id, exc)

    def rekeep_session(self, client_id: int) -> None:
        """After a retake (a new lease, or a Redis that restarted): the client's session names this
        process's lease, if it is still the one kept here; one a resume elsewhere has taken
        meanwhile is left alone, and one Redis lost stays lost (a new history resumes nothing).
        Raises Unavailable."""
        owner = self._owner(Meta((self.process_id, client_id)))
        with self._lock:
            earlier = self._sessions.get(client_id)
        if earlier is None:
            return
        value = b"\n".join([owner.encode(), *earlier.value.split(b"\n")[1:]])
        if self._call(self._scripts["if_value_set"], keys=[earlier.key], args=[earlier.value, value, self._session_ms]):
            with self._lock:
                if self._sessions.get(client_id) == earlier:
                    self._sessions[client_id] = earlier._replace(value=value)

    def end_session(self, client_id: int) -> None:
        """Forget the client's session and its marks, unless another process took it over meanwhile
        (and a lost claim of its that waits to be settled: it left). While the registry takes its
        clients back, after that (it may keep the session again meanwhile)."""
        with self._lock:
            if self._holding:
                self._deferred.append(("end_session", client_id))
                return
            session = self._sessions.pop(client_id, None)
            self._unclaimed.pop(client_id, None)
        if session is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                if self._scripts["if_owner_delete"](keys=[session.key], args=[session.value]) and session.marked:
                    self._redis.delete(*session_marks_keys(session.marks))

    def find_session(self, token: str) -> Session | None:
        """The session `token` names, with the rooms its owner is in, or None. Raises Unavailable."""
        key = session_key(token)
        deadline = time.monotonic() + self.rename_wait
        while True:
            value = self._call(self._redis.get, key)
            if value is None:
                return None
            owner, nick, identity, *rest = value.decode().split("\n")
            marks = rest[0] if rest else new_marks_id()  # a session kept before marks were: none yet
            entries = self._call(self._redis.smembers, f"roomchat:proc:{owner.rsplit(':', 1)[0]}:rooms")
            # each "<room>\n<nick>\n<owner>": the connection's rooms, under the nick each knows it by
            known = [e.decode().rsplit("\n", 2) for e in entries]
            mine = [(room, as_nick) for room, as_nick, of in known if of == owner]
            # under another nick and still its owner there: a rename has yet to reach that room (an
            # entry alone may be left over: on a Redis Cluster the index may hold more than is true)
            renaming = any(as_nick != nick and self._call(self._redis.hget, room_key(room, "owners"), as_nick)
                           == owner.encode() for room, as_nick in mine)
            if not renaming or time.monotonic() >= deadline:
                break
            # a rename of that connection on its way through its rooms (Registry._rename keeps the
            # session with the new nick first, then tells each room): the rooms it has yet to tell
            # would not move with the resume; it is a round trip per room, so wait for it (not
            # while closing: that wait would return at once, a look at Redis after another)
            if self._stop.wait(RENAME_POLL):
                break
        rooms = sorted(room for room, as_nick in mine if as_nick == nick)
        return Session(owner, nick, identity, tuple(rooms), key, value, marks)

    def set_session_mark(self, client_id: int, room: str, seq: int) -> int:
        """Mark `room` read up to `seq` for local client `client_id`, with its resume session (a
        connection without a token): as set_mark, living as long as the session. Raises Unavailable."""
        with self._lock:
            session = self._sessions.get(client_id)
            if session is not None:
                self._sessions[client_id] = session._replace(marked=True)  # renewed with it from now on
        if session is None:
            raise Unavailable("the connection has no resume session")  # it is gone: nobody hears the answer
        return int(self._call(self._personal("set_mark"), keys=session_marks_keys(session.marks),
                              args=[room, seq, MAX_MARKS, self._session_ms]))

    def session_mark(self, client_id: int, room: str) -> int | None:
        """Local client `client_id`'s mark in `room` kept with its resume session, or None (without
        a call to Redis while the session has none: a guest that never marked joins as before).
        Raises Unavailable."""
        with self._lock:
            session = self._sessions.get(client_id)
        if session is None or not session.marked:
            return None
        seq = self._call(self._redis.hget, session_marks_keys(session.marks)[0], room)
        return None if seq is None else int(seq)

    def take_session(self, session: Session, client_id: int) -> dict | None:
        """See engines.base.ClusterEngine. The old process is asked on its DM channel to drop
        the old connection (Registry.let_go); if that message is lost, or this take-over is cut
        off after the claim moved, the old process lets it go by itself, MOVE_GRACE after its
        heartbeat found the claim moved, or at its next beat once the claim was given back
        (`_settle_unclaimed`); its chats in the rooms that moved are refused meanwhile.
        Raises Unavailable (its outcome unknown: presenting the same token again settles it)."""
        owner = self._owner(Meta((self.process_id, client_id)))
        claim, _ = self._claim_value(session.nick, client_id)
        old_lease, old_client = session.owner.rsplit(":", 1)
        with self._lock:
            lease = self._lease
        key = nick_key(session.nick)
        # the claim first (after the mark that it moves): whoever moves it has the client (one call
        # each: a Redis Cluster's slots)
        held, moved = f"{session.owner}:{session.nick}", moved_key(session.owner)
        if self._call(self._redis.get, session.key) != session.value:
            return None
        # marked before the claim moves: the old process's heartbeat must not take the moved claim
        # for a lost one (its 1012 and leaves would race the memberships' move below)
        self._call(self._redis.set, moved, owner, px=self._session_ms)
        if not self._call(self._scripts["claim_move"], keys=[key], args=[held, claim, self._nick_ms]):
            with contextlib.suppress(*REDIS_ERRORS):
                self._redis.delete(moved)
            return None
        with self._lock:
            self._claims[key] = (claim, client_id)
        taken: dict = {}
        try:
            self._call(self._redis.sadd, f"roomchat:proc:{lease}:nicks", key)
            new_value = f"{owner}\n{session.nick}\n{session.identity}\n{session.marks}".encode()
            # its whole window, as keep_session writes it (KEEPTTL would keep none, had its old
            # process ended it since it was read: a key that would outlive a crash here)
            self._call(self._redis.set, session.key, new_value, px=self._session_ms)
            with self._lock:  # its new token's session replaces it; its marks stay where they are
                self._sessions[client_id] = Kept(session.key, new_value, session.marks, not session.identity)
            for room in session.rooms:
                self._call(self._redis.sadd, f"roomchat:proc:{lease}:rooms", f"{room}\n{session.nick}\n{owner}")
                seq = self._call(self._scripts["owner_move"], keys=[room_key(room, "owners"), room_key(room, "seq")],
                                 args=[session.nick, session.owner, owner])
                if seq >= 0:
                    taken[room] = seq
                    self._apart(self._redis.srem, f"roomchat:proc:{old_lease}:rooms",
                                f"{room}\n{session.nick}\n{session.owner}")
        except Unavailable:  # what was moved leaves as a disconnect would, once Redis takes it
            with self._lock:  # no client here has it: not renewed by the beats (it expires with its window)
                self._sessions.pop(client_id, None)
            for room in taken:
                self._defer(("announce", room, protocol.presence(room, "leave", session.nick),
                             Meta((self.process_id, client_id)), owner), first_try=True)
            self.release_nick(session.nick, client_id)
            raise
        with contextlib.suppress(*REDIS_ERRORS):
            self._pub(dm_channel(old_lease.split(".")[0]), orjson.dumps([int(old_client), None, "moved"]))
        return taken

    # -- room rules and reserved nicks (engines.base.Engine) ------------------------------------

    def reserve_nick(self, nick: str, until: float) -> None:
        ms = int((until - time.time()) * 1000)
        if ms > 0:
            self._call(self._scripts["reserve"], keys=[f"roomchat:reserved:{fold_nick(nick)}"], args=[nick, ms])

    def reserved_until(self, nick: str) -> float | None:
        return self._until(f"roomchat:reserved:{fold_nick(nick)}")

    def set_topic(self, room: str, topic: str) -> None:
        if topic:
            self._call(self._redis.set, room_key(room, "topic"), topic)
        else:
            self._call(self._redis.delete, room_key(room, "topic"))

    def topic(self, room: str) -> str:
        topic = self._call(self._redis.get, room_key(room, "topic"))
        return topic.decode() if topic else ""

    def restrict(self, room: str, kind: str, nick: str, until: float) -> None:
        key, ms = room_key(room, f"{kind}:{fold_nick(nick)}"), int((until - time.time()) * 1000)
        try:
            if ms > 0:
                self._call(self._redis.set, key, "", px=ms)
            else:
                self._call(self._redis.delete, key)
        finally:
            self._drop_rules(room)  # also what a look racing the write kept (the generation says so)

    def restricted_until(self, room: str, kind: str, nick: str) -> float | None:
        return self._until(room_key(room, f"{kind}:{fold_nick(nick)}"))

    def set_mode(self, room: str, moderated: bool, slow: int) -> None:
        """The room's mode, `roomchat:{<room>}:mode` = "<0|1>:<slow seconds>" (none: the default)."""
        try:
            if moderated or slow:
                self._call(self._redis.set, room_key(room, "mode"), _mode_value(moderated, slow))
            else:
                self._call(self._redis.delete, room_key(room, "mode"))
        finally:
            self._drop_rules(room)  # also what a look racing the write kept (the generation says so)

    def mode(self, room: str) -> tuple[bool, int]:
        return _mode(self._call(self._redis.get, room_key(room, "mode")))

    def chat_rules(self, room: str, nick: str, fresh: bool = False) -> tuple[float | None, tuple[bool, int]]:
        """The mute and the mode in one round trip (both keys are the room's: one slot), or,
        unless `fresh`, none: a nick read unmuted in a room read with the default mode is taken
        to be so still (`_open`), until a mute or mode of the room is written or delivered here,
        or the subscription drops. Wrongly, at worst, for that moment: the publish script checks
        both again as it writes (RulesChanged: the caller looks again)."""
        folded = fold_nick(nick)
        with self._lock:
            if not fresh and folded in self._open.get(room, ()):
                return None, (False, 0)
            generation = self._rules_generation
        ms, mode = self._call(self._scripts["chat_rules"], keys=[room_key(room, f"mute:{folded}"),
                                                                 room_key(room, "mode")])
        rules = (time.time() + ms / 1000 if ms > 0 else None), _mode(mode)
        if rules == (None, (False, 0)):
            with self._lock:
                # kept only if nothing dropped a room's rules since the read began, and while
                # subscribed (the room's mute and mode events reach this process)
                if generation == self._rules_generation and room in self._last and self._pubsub is not None:
                    open_ = self._open.setdefault(room, set())
                    if len(open_) < OPEN_NICKS:
                        open_.add(folded)
        return rules

    def _drop_rules(self, room: str | None) -> None:
        """Forget what chat_rules keeps of `room` (None: of every room). Takes `_lock`."""
        with self._lock:
            self._rules_generation += 1
            if room is None:
                self._open.clear()
            else:
                self._open.pop(room, None)

    def use_invite(self, invite: str, uses: int, until: float) -> int | None:
        """Take one of an invite's `uses` (`roomchat:invite:<id>`, kept while the invite lives): the
        number of this use, or None when all are taken or the invite has expired."""
        ms = int((until - time.time()) * 1000)
        if ms <= 0:
            return None
        taken = self._call(self._scripts["use_invite"], keys=[f"roomchat:invite:{invite}"], args=[uses, ms])
        return None if taken is None else int(taken)

    def invite_uses(self, invite: str) -> int:
        return int(self._call(self._redis.get, f"roomchat:invite:{invite}") or 0)

    def _until(self, key: str) -> float | None:
        ms = self._call(self._redis.pttl, key)
        return time.time() + ms / 1000 if ms > 0 else None

    # -- calls -------------------------------------------------------------------------------

    def _call(self, command, *args, **kwargs):
        """Run a Redis command or script; Raises Unavailable when Redis cannot be reached."""
        try:
            return command(*args, **kwargs)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            raise Unavailable("Redis is unreachable") from None

    def _write(self, script, keys: list, args: list) -> list:
        """Run a script that writes under idempotency keys: sent again while its outcome is
        unknown. Raises Unavailable (not carried out), _Unsettled (still unknown)."""
        for attempt in range(SETTLE_TRIES):
            try:
                if self._runner is None:
                    return script(keys=keys, args=args)
                return self._runner.run(script, keys, args)
            except UNKNOWN as exc:
                self._failed(exc)
                if attempt == 0 and isinstance(exc, NotSent):  # nothing of this write reached Redis
                    raise Unavailable("Redis is unreachable") from None
                if self._stop.wait(0.2 * (attempt + 1)):
                    break
            except REDIS_ERRORS as exc:  # an error reply (out of memory, ...): not carried out
                self._failed(exc)
                raise Unavailable(f"Redis refused: {exc}") from None
        raise _Unsettled()

    def _failed(self, exc: Exception) -> None:
        self._problem = f"Redis unreachable: {exc}"
        if self._metrics is not None:
            self._metrics.engine_errors.inc()

    def _owner(self, meta: Meta) -> str:
        with self._lock:
            return f"{self._lease}:{meta.origin[1] if meta.origin else ''}"

    def _index(self) -> str:
        with self._lock:
            return f"roomchat:proc:{self._lease}:rooms"

    def _key(self, meta: Meta) -> str:
        return f"{self.process_id}.{meta.key}" if meta.key else ""

    def _claim_value(self, nick: str, client_id: int) -> tuple:
        with self._lock:
            return f"{self._lease}:{client_id}:{nick}", client_id

    # -- deferred writes: retried in order by the heartbeat --------------------------------------

    def _defer(self, item: tuple, first_try: bool = False) -> None:
        """Carry out `item` later, in order with the others waiting; with `first_try`, now if
        nothing is waiting and Redis takes it."""
        if first_try:
            with self._lock:
                waiting = bool(self._deferred) or self._holding
            if not waiting:
                try:
                    self._do(item)
                    return
                except (*REDIS_ERRORS, Unavailable, _Unsettled):
                    pass
        with self._lock:
            if len(self._deferred) >= DEFERRED_MAX:
                log.error("too many writes waiting for Redis; the oldest is dropped: %s", self._deferred[0][0])
                self._deferred.popleft()
            self._deferred.append(item)

    def _run_deferred(self) -> None:
        """Heartbeat: carry out the waiting writes in order, until one fails."""
        while True:
            with self._lock:
                if not self._deferred:
                    return
                item = self._deferred[0]
            try:
                self._do(item)
            except (*REDIS_ERRORS, Unavailable, _Unsettled):
                return
            with self._lock:
                if self._deferred and self._deferred[0] is item:
                    self._deferred.popleft()

    def _do(self, item: tuple) -> None:
        kind = item[0]
        if kind == "announce":
            _, room, event, meta, owner = item
            self._announce(room, event, meta, owner, f"roomchat:proc:{owner.rsplit(':', 1)[0]}:rooms")
        elif kind == "release":
            _, key, value = item
            self._scripts["if_owner_delete"](keys=[key], args=[value])
        elif kind == "end_session":  # asked for during a retake: the session as it is after it
            self.end_session(item[1])
        elif kind == "release_nick":  # asked for during a retake: the claim as it is after it
            _, nick, client_id = item
            key = nick_key(nick)
            with self._lock:
                claim = self._claims.get(key)
                if claim is None or claim[1] != client_id:
                    return
                del self._claims[key]
            self._scripts["if_owner_delete"](keys=[key], args=[claim[0]])  # failing: it expires unrenewed
        else:  # "settle" a chat (its sender is answered if it was not stored), or "cancel" a write
            _, room, meta = item
            written = self._scripts["resolve"](keys=[room_key(room, "idem")], args=[self._key(meta)])
            if kind == "settle" and not written:
                self._hub.reject([(room, None, meta)], "Redis did not answer in time")

    # -- the listener thread ---------------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                if self._pubsub is None:
                    self._connect()
                    delay = 0.1
                self._receive()
            except (*REDIS_ERRORS, OSError) as exc:
                self._failed(exc)
                log.error("Redis subscription lost (%s); reconnecting in %.1f s", exc, delay)
                self._drop_pubsub()
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_MAX_DELAY)
            except Exception:  # a bug: logged; the subscription starts over (and catches up)
                log.exception("Redis listener: unexpected error")
                self._drop_pubsub()
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_MAX_DELAY)
        self._drop_pubsub()

    def _connect(self) -> None:
        """Subscribe to this process's DM channel and every wanted room, then catch each room up
        from its history and log (what was published while the link was down)."""
        # On RESP3 a message is a push, and redis-py's default handler for those logs each one
        # at debug level, building its text first (str() of the whole message) even when debug is
        # off; taking the push as it is skips that. (On RESP2 a message is a plain reply.)
        resp3 = check_protocol_version(self._redis.get_connection_kwargs().get("protocol"), 3)
        pubsub = self._redis.pubsub(push_handler_func=_as_is if resp3 else None)
        if self.sharded:
            # redis-py would move the subscriptions to a slot's new node itself, from a thread of
            # its own, and what was published in between would be missed with no catch-up: the
            # listener subscribes anew instead (`_check_placement`), catching each room up here
            pubsub.on_slots_changed = self._slots_moved.set
        self._check_epoch()
        self._check_restart()
        # Under `_sub_lock` from the rooms' list until the subscription is in place: a room that
        # `subscribe` adds meanwhile is then either in the list or sent on this subscription.
        with self._sub_lock:
            with self._lock:
                rooms = list(self._last)
                self._leaving.clear()
            self._slots_moved.clear()
            self._subscribe(pubsub, self._dm_channel, *[room_key(r, "events") for r in rooms])
            self._pubsub = pubsub
            self._sockets = {}
            if self.sharded:
                self._check_sockets(pubsub)
        for room in rooms:
            with self._lock:
                last, epoch = self._last.get(room), self.epoch
            if last is not None:
                self._deliver(self._fill(room, last, None, epoch))
        if self._problem:
            self._metrics.engine_reconnects.inc()
            log.warning("Redis is back")
        self._problem = None

    def _check_restart(self) -> None:
        """At each (re)subscription: if a master is another run than before (it restarted), or
        a node that was no master before is one now (a Redis Cluster's failover), the registry
        takes its clients back (`retake`, at the next beat), as after a lost lease: a restart from
        an append-only file, or a replica that took over (replication is asynchronous), may have
        lost the last acknowledged writes, a join or a nick claim among them, that no seq shows.
        What is still there is left as it is (a join of a member already in, a claim already
        held, change nothing). On a Redis Cluster each master is asked (each restarts, or fails
        over, on its own); while one cannot be reached the resubscription waits, tried again by
        the listener, as it does for a room on that master. Raises REDIS_ERRORS."""
        runs = self._masters()
        changed = sorted(node or "Redis" for node, run in runs.items() if run != (self._runs or runs).get(node))
        if changed:
            log.warning("%s restarted or took over; every client's nick and rooms are checked again",
                        ", ".join(changed))
            self._retaking = True  # read by the heartbeat (one bool: atomic under the GIL)
            self._wake.set()
        self._runs = runs

    def _masters(self) -> dict:
        """{node name: run_id} of every master ("" names the one Redis, or a Redis Cluster's only
        master). Raises REDIS_ERRORS (on a Redis Cluster, once redis-py found the masters anew)."""
        if not self.sharded:
            return {"": self._redis.info("server")["run_id"]}
        found = self._redis.info("server", target_nodes=redis.RedisCluster.PRIMARIES)
        if "run_id" in found:  # one master: redis-py gives its answer alone
            return {"": found["run_id"]}
        return {node: info["run_id"] for node, info in found.items()}

    def _check_epoch(self) -> None:
        """After a reconnect and at every heartbeat: if Redis lost its data (the epoch is gone),
        start a new history; if another process started one, take it. Raises REDIS_ERRORS."""
        with self._lock:
            epoch = self.epoch
        current = self._redis.get(EPOCH)  # a write only when it is gone (none at maxmemory)
        if current is None:
            current = self._scripts["next_epoch"](keys=[EPOCH], args=[epoch, new_epoch()])
        self._take_epoch(current.decode())

    def _history_replaced(self, why: str, epoch: str) -> None:
        """Redis handed out a seq at or below one delivered here in `epoch` (this process's epoch
        when that seq was read): a new epoch for everyone, started by NEXT_EPOCH once however many
        threads and processes find it. Nothing if this process has left `epoch` since: the seq
        compared was of the history before."""
        with self._lock:
            if epoch != self.epoch:
                return
        log.error("%s: Redis lost acknowledged writes; a new history begins", why)
        with contextlib.suppress(*REDIS_ERRORS):
            self._take_epoch(self._scripts["next_epoch"](keys=[EPOCH], args=[epoch, new_epoch()]).decode())

    def _take_epoch(self, epoch: str) -> None:
        """`epoch` is Redis's: if it is not this process's yet, take it, and close every client
        with 1012 (once per epoch, whichever thread sees it first)."""
        with self._lock:
            if epoch == self.epoch:
                return
            self.epoch = epoch
            self._last = dict.fromkeys(self._last)  # seqs start over: accept them from the first
        log.error("a new history (epoch %s); every client reconnects", epoch)
        self._hub.close_all(protocol.CloseCode.SERVICE_RESTART, "the chat history was reset; reconnect")

    def _receive(self) -> None:
        items = []
        try:
            self._receive_into(items)
        finally:  # what was placed is delivered, also when a later message's catch-up failed
            if items:
                self._deliver(items)

    def _deliver(self, items: list) -> None:
        """Hand `items` to the hub; a mute or mode among them first drops what chat_rules keeps
        of its room, so a member who saw it is judged by it."""
        for room, event, _meta in items:
            if event["type"] in ("mute", "mode"):
                self._drop_rules(room)
        self._hub.deliver(items)

    def _receive_into(self, items: list) -> None:
        """Read what has arrived (RECEIVE_BATCH items, or the message that goes past it) into
        `items`. Raises redis.RedisError."""
        pubsub = self._pubsub
        if self.sharded:
            self._receive_sharded(pubsub, items)
            return
        message = pubsub.get_message(timeout=0.5)
        conn = pubsub.connection
        while message is not None:
            items += self._take(message)
            # Whatever has arrived already joins this batch, read whole (within the socket's
            # timeout). Not get_message(timeout=0): a reply that has arrived in part is a timeout
            # to redis-py, which then reconnects and drops what was in flight. A room's message
            # is read without get_message's layers (half of its cost); the rest go through them.
            # The batch is full before the next message is read, never after: one read is taken.
            if len(items) >= RECEIVE_BATCH or not conn.can_read(timeout=0):
                break
            response = conn.read_response(push_request=True)
            if isinstance(response, list) and response[0] == b"message":
                message = {"type": "message", "channel": response[1], "data": response[2]}
            else:
                message = pubsub.handle_message(response)

    def _receive_sharded(self, pubsub, items: list) -> None:
        """On a Redis Cluster: one connection per shard with subscriptions; whatever has arrived
        on each (waiting up to 0.5 s for something), read into `items`. Raises redis.RedisError
        (and RedisClusterException), also when a subscription is on a node that no longer serves
        its channel."""
        if self._slots_moved.is_set():
            self._slots_moved.clear()
            self._check_placement(pubsub)
        self._check_sockets(pubsub)
        nodes = list(pubsub.node_pubsub_mapping.items())

        def ready() -> list:
            return [(name, node) for name, node in nodes
                    if node.connection is not None and node.connection.can_read(timeout=0)]

        arrived = ready()
        if not arrived:
            socks = [node.connection._sock for _name, node in nodes
                     if node.connection is not None and node.connection._sock is not None]
            if not socks:
                self._stop.wait(0.05)
                return
            select.select(socks, [], [], 0.5)
            arrived = ready()
        for name, node in arrived:
            target = self._redis.get_node(node_name=name)
            if target is None:  # the node left the cluster: subscribe again where the slots are now
                raise redis.ConnectionError(f"{name} is no longer a node of the cluster")
            # Read off the connection, not with get_sharded_message: redis-py connects a
            # subscription anew before it reads when a call of any thread met a failover (it marks
            # every connection to the nodes for that), dropping what had arrived unread, a DM
            # among them, and what is published until it has subscribed again, with no catch-up.
            conn = node.connection
            while len(items) < RECEIVE_BATCH and conn is not None and conn.can_read(timeout=0):
                response = conn.read_response(push_request=True)
                if node.is_health_check_response(response):
                    node.health_check_response_counter -= 1
                    continue
                message = node.handle_message(response)
                if message is not None:
                    items += self._take(message)

    def _check_sockets(self, pubsub) -> None:
        """Raises redis.ConnectionError when a shard's subscription is on another socket than the
        listener last saw: redis-py connected it anew and subscribed again by itself (a connection
        marked in a failover, then used by a `subscribe` of another thread), and what was published
        meanwhile is missed: the listener subscribes anew and catches each room up. A mark found
        first is taken off (what had arrived unread would be dropped with it, a DM among them).
        Also sends each shard's health check when due (its answer is read with the messages)."""
        for name, node in list(pubsub.node_pubsub_mapping.items()):
            conn = node.connection
            sock = conn and conn._sock
            if sock is None:
                continue
            if self._sockets.setdefault(name, sock) is not sock:
                raise redis.ConnectionError(f"the subscription on {name} was connected anew by redis-py")
            if conn.should_reconnect():
                conn.reset_should_reconnect()
            node.check_health()

    def _check_placement(self, pubsub) -> None:
        """Raises redis.ConnectionError when a channel is subscribed on a node that no longer
        serves its slot (a failover, a slot moved): the listener subscribes anew, where the slots
        are now, and catches each room up. A node that has not yet said so would stay silent
        while another one takes the channel's messages (an old master hung, not dead)."""
        for name, node in list(pubsub.node_pubsub_mapping.items()):
            for channel in list(node.shard_channels):
                owner = self._redis.get_node_from_key(channel)
                if owner is None or owner.name != name:
                    raise redis.ConnectionError(f"{channel!r} moved from {name} to another node")

    def _unsubscribed(self, channel: str) -> None:
        """A node's SUNSUBSCRIBE (a Redis Cluster): the answer to this process's own, or the
        node's word that it no longer serves the channel's slot (a failover's old master back
        as a replica, a slot moved). Raises redis.ConnectionError when the channel is still
        wanted: the listener subscribes anew, where the slot is now, and catches up."""
        with self._lock:
            if channel in self._leaving:
                self._leaving.discard(channel)
                return
            wanted = channel == self._dm_channel or channel[len("roomchat:{"):-len("}:events")] in self._last
        if wanted:
            raise redis.ConnectionError(f"{channel!r} is no longer served by its node")

    def _take(self, message: dict) -> list:
        """One pub/sub message: a subscription confirmed, a DM, or a room's event (the items to
        deliver for it)."""
        items = []
        if message["type"] in ("subscribe", "ssubscribe"):
            with self._lock:
                confirmed = self._confirmed.get(message["channel"].decode())
            if confirmed is not None:
                confirmed.set()
        elif message["type"] == "sunsubscribe":
            self._unsubscribed(message["channel"].decode())
        elif message["type"] in ("message", "smessage"):
            channel = message["channel"].decode()
            if channel == self._dm_channel:
                client, event, *why = orjson.loads(message["data"])
                if event is None:  # let go of a nick, of a client resumed elsewhere, or of a
                    # guest's nick for a post, or hand out kept DMs: off this thread, which must
                    # keep on listening
                    act, args = self._hub.evict, (client,)
                    if why == ["moved"]:
                        act = self._hub.let_go
                    elif why == ["dms"]:
                        act = self._hub.hand_waiting
                    elif why[:1] == ["guest"]:
                        act, args = self._hub.evict_guest, (client, why[1])
                    threading.Thread(target=act, args=args, daemon=True).start()
                else:
                    self._hub.deliver_dm(client, event)
            else:
                items += self._place(channel[len("roomchat:{"):-len("}:events")], message["data"])
        return items

    def _place(self, room: str, data: bytes) -> list:
        """The items to deliver for one message (the chats of one PUBLISH script, or one other
        event: an origin line and an event line each), each after any it shows were missed."""
        with self._lock:
            if room not in self._last:
                return []  # unsubscribed meanwhile
            last, epoch = self._last[room], self.epoch
        # one parse for the whole message: its lines (JSON never holds a raw newline) as an array
        parsed = orjson.loads(b"[" + data.replace(b"\n", b",") + b"]")
        items = []
        for at in range(0, len(parsed), 2):
            origin, event = parsed[at], parsed[at + 1]
            if event["type"] in EPHEMERAL_TYPES:  # no place in the stream: as it comes
                items.append((room, event, Meta(origin=(origin[0], origin[1]) if origin[0] is not None else None)))
                continue
            meta, place = _meta(origin, event)
            stored = event["type"] in protocol.STORED_EVENTS  # with a seq of its own
            if last is not None and place <= last:
                if stored:
                    self._check_seq(room, last[0], epoch)
                continue  # delivered already (a catch-up got there first)
            if last is not None and place[0] > last[0] + stored:
                items += self._fill(room, last, place, epoch)  # chats were missed before this one
            items.append((room, event, meta))
            last = place
        with self._lock:
            if epoch != self.epoch:
                return []  # placed against the history before: no place of it is kept in this one
            if last is not None and room in self._last:
                self._last[room] = max(last, self._last[room] or last)
        return items

    def _check_seq(self, room: str, delivered: int, epoch: str) -> None:
        """A chat at or below seq `delivered`, delivered here in `epoch`: a repeat, unless Redis's
        counter went back."""
        with contextlib.suppress(*REDIS_ERRORS):
            if int(self._redis.get(room_key(room, "seq")) or 0) < delivered:
                self._history_replaced(f"{room}: seq {delivered} delivered here, Redis is below it", epoch)

    def _fill(self, room: str, last: tuple, upto: tuple | None, epoch: str) -> list:
        """Stored events after place `last` (before `upto`), as items, from the room's chats and
        log merged by place; none if this process left `epoch` (the one of `last`) meanwhile.
        Raises REDIS_ERRORS."""
        seq, n = last
        # (an event other than a stored one follows its seq: upto[1] > 0 takes that seq in)
        chats = self._stored(room, seq, None if upto is None else upto[0] + (upto[1] > 0))
        logged = self._redis.xrange(room_key(room, "log"), f"{seq}-0" if n == 0 else f"({seq}-{n - 1}",
                                    "+" if upto is None else f"({upto[0]}-{max(upto[1] - 1, 0)}")
        items = []
        for event, origin in chats:  # chats in their current state, edits, deletes, reactions
            meta = _meta(orjson.loads(origin), event)[0] if origin is not None else Meta()
            items.append(((event["seq"], 0), (room, event, meta)))
        for entry_id, fields in logged:
            at, k = (int(x) for x in entry_id.decode().split("-"))
            place = (at, k + 1)
            if upto is not None and place >= upto:
                continue
            event = orjson.loads(fields[b"e"])
            origin = [*orjson.loads(fields[b"o"]), at, k, *((1,) if b"r" in fields else ())]  # as published
            items.append((place, (room, event, _meta(origin, event)[0])))
        items.sort(key=lambda item: item[0])
        if items:
            with self._lock:
                if epoch != self.epoch:
                    return []
                if room in self._last:
                    self._last[room] = max(items[-1][0], self._last[room] or items[-1][0])
            log.warning("%s: %d events filled in from history", room, len(items))
        return [item for _place, item in items]

    def _drop_pubsub(self) -> None:
        self._drop_rules(None)  # its rooms' mute and mode events may be missed until it is back
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*REDIS_ERRORS, OSError):
                pubsub.close()

    # -- the heartbeat thread ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._beat_every)
            self._wake.clear()
            if self._stop.is_set():
                return
            late = time.monotonic() - self._beat_ok > 2 * self._beat_every  # paused or cut off: reap nobody
            try:
                self._run_deferred()  # first: a retake must not overtake what waits
                self._beat()
                self._check_epoch()
                self._check_seqs()
                if not late:
                    self._reap()
                self._run_quotas()
                self._problem = None if self._pubsub is not None else self._problem
            except (*REDIS_ERRORS, Unavailable) as exc:
                self._failed(exc)
                log.warning("Redis heartbeat failed: %s", exc)
            except Exception:  # a bug: logged, and the beat goes on (a dead heartbeat loses the lease)
                log.exception("Redis heartbeat: unexpected error")

    def _used_memory(self) -> int:
        """Redis's used_memory (a Redis Cluster's fullest primary's). Raises REDIS_ERRORS."""
        if not self.sharded:
            return self._redis.info("memory")["used_memory"]
        return max(self._redis.get_redis_connection(node).info("memory")["used_memory"]
                   for node in self._redis.get_primaries())

    def _run_quotas(self) -> None:
        """Heartbeat: the history quotas (one process a beat); the rooms forgotten are dropped
        here too, and on a Redis Cluster their count versions (ROOM_VERSIONS, in another slot
        than the room: one call for the pass; should it fail, or a leave's count under way as a
        room was forgotten land after it, that room's field stays, a few bytes). Raises
        REDIS_ERRORS."""
        with self._lock:
            lease = self._lease
        forgotten = self._quotas.run(self._redis, self._scripts, lease, int(self._beat_every * 1000), self._used_memory)
        if forgotten:
            self._hub.forget(forgotten)
            if self.sharded:
                self._redis.hdel(ROOM_VERSIONS, *forgotten)

    def _beat(self) -> None:
        """Renew the lease and the nick claims; a lost lease is taken anew and the registry takes
        its clients back; a client whose claim was lost is settled (`_settle_unclaimed`). Raises
        REDIS_ERRORS."""
        with self._lock:
            lease, registered = self._lease, self._registered
        if not self._scripts["beat"](keys=[LEASES, BEATS], args=[lease, self._lease_ms, int(registered)]):
            self._retake(lease)
        with self._lock:
            self._registered = True
            claims = list(self._claims.items())
            # sessions are written with their whole window and refreshed at half of it
            due = time.monotonic() - self._sessions_kept >= self._session_ms / 2000
            sessions = [key for kept in self._sessions.values()
                        for key in (kept.key, *(session_marks_keys(kept.marks) if kept.marked else ()))] if due else []
        if self._retaking:
            # cleared before the retake: a restart the listener notices during it (which may lose
            # the retake's own writes) sets it again, for another retake after this one
            self._retaking = False
            with self._lock:
                self._holding, self._unretaken = True, None
            try:
                self._hub.retake()  # Raises Unavailable: tried again at the next beat
            except BaseException:
                self._retaking = True
                raise
            finally:
                with self._lock:
                    self._holding = False
            self._run_deferred()  # what was held, now: in order, after the retake
        pipe = self._redis.pipeline(transaction=False)
        for key in sessions:
            pipe.pexpire(key, self._session_ms)
        if self.sharded:
            renewed = self._refresh_sharded(claims, pipe, len(sessions))
        else:
            for key, (value, _client) in claims:
                self._scripts["refresh"](keys=[key], args=[value, self._nick_ms], client=pipe)
            renewed = pipe.execute()[len(sessions):]
        if due:
            self._sessions_kept = time.monotonic()
        for (key, (value, client)), kept in zip(claims, renewed, strict=True):
            if not kept:
                with self._lock:
                    if self._claims.get(key, (None,))[0] == value:  # still the client's: lost now
                        del self._claims[key]
                        self._unclaimed[client] = Unclaimed(key, moved_key(value.rsplit(":", 1)[0]))
        self._settle_unclaimed()
        self._beat_ok = time.monotonic()

    def _settle_unclaimed(self) -> None:
        """Heartbeat: settle the local clients whose nick claim was lost (`_unclaimed`). One that
        no resume elsewhere marked as moved lost it while this process was cut off: the registry
        closes it (lose_nick, 1012). One marked waits for that resume's message (let_go, 4002)
        while the resume's client holds the claim, for `move_grace` seconds at most; once the
        claim is anyone else's or nobody's (the take-over was cut off and gave it back), or the
        grace is over (the message was lost), it is let go here all the same: its session was
        taken elsewhere, whatever became of the take-over, and it must not keep a nick it no
        longer holds. let_go of a client the message already let go does nothing. Raises
        REDIS_ERRORS (what is not settled yet is looked at again by the next beat)."""
        now = time.monotonic()
        with self._lock:
            entries = list(self._unclaimed.items())
        for client, entry in entries:
            settled = None
            if entry.mover is None:  # not looked at yet: moved, or lost?
                mover = self._redis.get(entry.marker)
                settled = (entry._replace(mover=f"{mover.decode()}:", deadline=now + self._move_grace)
                           if mover is not None else None)
                act, why = self._hub.lose_nick, None
            else:
                act, why = self._hub.let_go, "its take-over's message did not come"
                if entry.deadline > now:
                    held = self._redis.get(entry.key)
                    if held is not None and held.decode().startswith(entry.mover):
                        continue  # its new connection has it: the message may yet come
                    why = "its take-over let go of its nick"
            with self._lock:
                if self._unclaimed.get(client) != entry:
                    continue  # settled meanwhile by another beat (a test's, beside the heartbeat's)
                if settled is not None:
                    self._unclaimed[client] = settled
                    continue
                del self._unclaimed[client]
            if why is not None:
                log.warning("client %d was moved by a resume elsewhere, but %s: letting it go", client, why)
            act(client)

    def _renew(self) -> None:
        """The lease thread (a Redis Cluster): renew the lease every beat, apart from the
        heartbeat, whose other calls (nick claims, waiting writes, seqs) go to every master: one
        that is stalled or failing over holds each up for seconds, and a lease renewed only after
        them would run out though its master answers (the process reaped, its members announced
        gone and its nicks freed, by another whose beat missed that master). It never takes a
        lease anew (BEAT with `registered`): one found gone is the heartbeat's to take back."""
        while not self._stop.wait(self._beat_every):
            with self._lock:
                lease = self._lease
            try:
                self._scripts["beat"](keys=[LEASES, BEATS], args=[lease, self._lease_ms, 1])
            except REDIS_ERRORS:
                pass  # the heartbeat, which runs into the same fault, reports it
            except Exception:  # a bug: logged, and the next beat tries again
                log.exception("Redis lease: unexpected error")

    def _repairs(self) -> None:
        """The repair thread (a Redis Cluster): `_repair` every beat. Apart from the heartbeat: a
        call to a master that is down can take redis-py seconds to give up, and must not delay
        the lease (a process whose beats stop that long is reaped)."""
        while not self._stop.wait(self._beat_every):
            try:
                self._repair()
            except REDIS_ERRORS as exc:
                self._failed(exc)
                log.warning("Redis Cluster: room counts and membership index not put right yet: %s", exc)
            except Exception:  # a bug: logged, and the next beat tries again
                log.exception("Redis Cluster repair: unexpected error")

    def _repair(self) -> None:
        """Every beat, on a Redis Cluster: put right, from the truth, what is written apart from a
        room's own call (`_apart`) and may have been lost (that call failed, or a failover lost
        it): this process's membership index, from its local members, and the room counts, from
        the rooms' members. Each beat looks at up to REPAIR_ROOMS rooms with local members (by
        name, on from where the last beat stopped: their placed members, ClusterRegistry.
        memberships) and about REPAIR_ROOMS rooms `rooms` lists (ZSCAN, on from the last beat's
        cursor: a count left for a room nobody is in any more): one pipeline (an SADD of the
        index entries, a ZCARD per room, the counts and their versions), then two calls per
        room whose count is not its members' (RECOUNT, COUNT). The index only ever gains entries:
        one too many (a member that left as it was read) is harmless, the reaper's leave then
        finds another owner there and does nothing. Raises REDIS_ERRORS."""
        local = self._hub.memberships(self._repair_after, REPAIR_ROOMS)
        self._repair_after = local[-1][0] if len(local) == REPAIR_ROOMS else None  # else round again
        self._repair_cursor, listed = self._redis.zscan(ROOMS, self._repair_cursor, count=REPAIR_ROOMS)
        rooms = list(dict.fromkeys([room for room, _members in local] + [room.decode() for room, _n in listed]))
        if not rooms:
            return
        with self._lock:
            lease = self._lease
        entries = [f"{room}\n{nick}\n{lease}:{client}" for room, members in local for nick, client in members]
        pipe = self._redis.pipeline(transaction=False)
        if entries:
            pipe.sadd(f"roomchat:proc:{lease}:rooms", *entries)
        for room in rooms:
            pipe.zcard(room_key(room, "members"))
        pipe.zmscore(ROOMS, rooms)
        pipe.hmget(ROOM_VERSIONS, rooms)
        *members, counted, versions = pipe.execute()[1 if entries else 0:]
        for room, count, was, version in zip(rooms, members, counted, versions, strict=True):
            if count == int(was or 0):
                continue
            count, version = self._scripts["recount"](keys=[room_key(room, "members"), room_key(room, "ver")],
                                                      args=[version or 0])
            self._scripts["count"](keys=[ROOMS, ROOM_VERSIONS], args=[room, count, version])
            log.info("Redis Cluster: room %s was counted %d, has %d members: count put right", room, int(was or 0),
                     count)

    def _refresh_sharded(self, claims: list, pipe, queued: int) -> list:
        """REFRESH for each claim on a Redis Cluster, where a pipeline cannot run scripts: each
        claim read in `pipe`, those still ours renewed in a second pipeline, those gone taken again
        one by one (rare); 1 or 2 for each kept, 0 for each someone else holds now (`queued`:
        commands in `pipe` before). Raises REDIS_ERRORS."""
        for key, _claim in claims:
            pipe.get(key)
        held = pipe.execute()[queued:]
        renew = self._redis.pipeline(transaction=False)
        kept = []
        for (key, (value, _client)), now in zip(claims, held, strict=True):
            if now is not None and now.decode() == value:
                renew.pexpire(key, self._nick_ms)
                kept.append(1)
            elif now is None:
                kept.append(self._scripts["refresh"](keys=[key], args=[value, self._nick_ms]))
            else:
                kept.append(0)
        renew.execute()
        return kept

    def _retake(self, lost: str) -> None:
        """This process was reaped: a new lease (generation), then the registry takes back its
        clients' nicks and rooms. Raises REDIS_ERRORS, Unavailable (tried again next beat)."""
        with self._lock:
            self._generation += 1
            self._lease = f"{self.process_id}.{self._generation}"
            self._registered = False
            self._claims.clear()
            lease = self._lease
        log.error("this process's lease %s was lost (paused or cut off too long); taking everything back as %s",
                  lost, lease)
        self._scripts["beat"](keys=[LEASES, BEATS], args=[lease, self._lease_ms, 0])
        self._retaking = True

    def _check_seqs(self) -> None:
        """A room whose counter in Redis went below what was delivered here: history replaced."""
        with self._lock:
            rooms = [(room, last[0]) for room, last in self._last.items() if last is not None and last[0] > 0]
            epoch = self.epoch
        if not rooms:
            return
        pipe = self._redis.pipeline(transaction=False)
        for room, _seq in rooms:
            pipe.get(room_key(room, "seq"))
        for (room, seq), now in zip(rooms, pipe.execute(), strict=True):
            if int(now or 0) < seq:
                self._history_replaced(f"{room}: seq {seq} delivered here, Redis has {int(now or 0)}", epoch)
                return

    def _reap(self) -> None:
        """Announce the leaves of processes whose lease expired more than a grace ago, and free
        their nicks (each reaped by one process; one that stopped half-way is finished by the
        next). Raises REDIS_ERRORS, Unavailable."""
        for lease in (p.decode() for p in self._scripts["reap"](keys=[LEASES, REAPING, BEATS],
                                                               args=[self._lease_ms])):
            count = self._clean_up(lease)
            self._redis.srem(REAPING, lease)
            log.warning("process %s is gone: %d members left their rooms", lease, count)

    def _clean_up(self, lease: str) -> int:
        """Announce every membership of `lease` gone and delete its nick claims. Raises
        REDIS_ERRORS, Unavailable, _Unsettled."""
        index = f"roomchat:proc:{lease}:rooms"
        entries = self._redis.smembers(index)
        for entry in entries:
            room, nick, owner = entry.decode().split("\n")
            event = protocol.presence(room, "leave", nick)
            self._announce(room, event, Meta(origin=(lease.split(".")[0], int(owner.rsplit(":", 1)[1]))), owner, index)
        for key in self._redis.smembers(f"roomchat:proc:{lease}:nicks"):
            self._scripts["if_owner_prefix_delete"](keys=[key], args=[f"{lease}:"])
        self._redis.delete(index, f"roomchat:proc:{lease}:nicks")
        return len(entries)


def transcript_of_redis(url: str, room: str, since: float) -> list:
    """The room's stored chats and moderation events from `since` (Unix time), in stream order,
    as ops/export.py writes them (a moderation event gains `ts`). Raises EngineError when Redis
    cannot be read. `url` may name any node of a Redis Cluster, as `--redis` may."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2)
    try:
        if client.info("cluster").get("cluster_enabled"):  # its keys may be on another node
            client.close()
            client = redis.RedisCluster.from_url(url, socket_timeout=10, socket_connect_timeout=2)
        chats = {_seq_of(entry_id): orjson.loads(f[b"e"]) for entry_id, f in client.xrange(room_key(room, "hist"))}
        for member in client.zrange(room_key(room, "cur"), 0, -1):  # edited and deleted chats as they are now
            event = orjson.loads(member.partition(b"\n")[2])
            if event["seq"] in chats:  # else deleted, or gone from `hist` past the room's window
                chats[event["seq"]] = event
        logged = client.xrange(room_key(room, "log"))
    except REDIS_ERRORS as exc:
        raise EngineError(f"cannot read Redis at {shown(url)}: {exc}") from None
    finally:
        client.close()
    items = [((e["seq"], 0), e) for e in chats.values()
             if e["type"] == "chat" and not e.get("deleted") and e["ts"] >= since]
    for entry_id, fields in logged:
        event, ts = orjson.loads(fields[b"e"]), int(fields.get(b"t", 0)) / 1000
        if event["type"] in MODERATION and ts >= since:
            at, k = (int(x) for x in entry_id.decode().split("-"))
            items.append(((at, k + 1), {**event, "ts": ts}))
    return [event for _place, event in sorted(items, key=lambda item: item[0])]


def _mode_value(moderated: bool, slow: int) -> str:
    """A room's mode as its mode key holds it ("" for the default, which the key's absence means)."""
    return f"{int(moderated)}:{slow}" if moderated or slow else ""


def _mode(value: bytes | None) -> tuple[bool, int]:
    """(moderated, slow) from a room's mode key ("<0|1>:<slow seconds>"; none or empty: the default)."""
    moderated, slow = (value.decode() if value else "0:0").split(":")
    return moderated == "1", int(slow)


def _kind_of(url: str, server: dict, client) -> str:
    """"standalone" or "cluster" (a node of a Redis Cluster: any node will do); EngineError (one
    line) for a Redis roomchat cannot use: a Sentinel, a read-only replica. Raises REDIS_ERRORS."""
    if server.get("redis_mode") == "sentinel":
        raise EngineError(f"{shown(url)} is a Redis Sentinel, which roomchat does not support: point --redis at the "
                          "primary it names (redis-cli -p 26379 SENTINEL get-master-addr-by-name NAME)")
    if server.get("redis_mode") == "cluster" or client.info("cluster").get("cluster_enabled"):
        if int(server["redis_version"].split(".")[0]) < 7:
            raise EngineError(f"{shown(url)} is a Redis Cluster of Redis {server['redis_version']}: roomchat needs "
                              "Redis 7 or later there (sharded pub/sub)")
        return "cluster"
    if client.info("replication").get("role") != "master":
        raise EngineError(f"{shown(url)} is a read-only replica: point --redis at its primary")
    return "standalone"


class _Unsettled(Exception):
    """A write's outcome is still unknown after SETTLE_TRIES attempts."""


@functools.lru_cache(maxsize=4096)
def _publish_keys(room: str) -> tuple:
    """The PUBLISH script's keys of `room` but the sender's mute (made once per room: a chat's
    call is the hot path)."""
    return (room_key(room, "seq"), room_key(room, "hist"), room_key(room, "idem"), room_key(room, "owners"),
            floor_key(room), room_key(room, "mode"))


def _as_is(response):
    """A pub/sub push as redis-py's parser read it (PubSub's `push_handler_func`)."""
    return response


def _seq_of(entry_id: bytes) -> int:
    """The seq of an entry of a room's `hist` (entry id `0-<seq>`)."""
    return int(entry_id.split(b"-")[1])


def _origin_of(item: tuple) -> tuple | None:
    """The origin (process, client) of a room write waiting in `_deferred`: a leave, nick change,
    join taken back (announce), or a settle or cancel; None for a nick release or a session end."""
    meta = item[3] if item[0] == "announce" else item[2] if item[0] in ("settle", "cancel") else None
    return meta.origin if meta is not None else None


def _origin(meta: Meta) -> bytes:
    """Meta as JSON: [process, client, reply id, change, echo, key]."""
    process, client = meta.origin if meta.origin else (None, None)
    return orjson.dumps([process, client, meta.reply_id, meta.change, meta.echo, meta.key])


def _meta(origin: list, event: dict) -> tuple:
    """(Meta, place) from an origin's JSON (with `at` and n for an event other than a chat, and
    then 1 for a kick or ban that took its nick out of the members: ANNOUNCE)."""
    process, client, reply_id, change, echo, key = origin[:6]
    placed = len(origin) > 6  # an event without a seq of its own: at, n
    at = origin[6] if placed else None
    meta = _new_meta(((process, client) if process is not None else None, reply_id, at, change, echo, key,
                      len(origin) > 8 and origin[8] == 1))
    return meta, ((at, origin[7] + 1) if placed else (event["seq"], 0))


# Meta made from its fields in order, as tuple.__new__ does, without the Python-level __new__ that
# NamedTuple gives it (the hot path: per event, on every process): a new field of Meta goes last.
_new_meta = functools.partial(tuple.__new__, Meta)
# the origin (without its closing ']') of the leave ANNOUNCE gives a stale member of a nick that
# is joined or renamed to by another client: no origin, so every member gets it
_NO_ORIGIN = _origin(Meta())[:-1]
