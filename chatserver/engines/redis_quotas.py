"""Quotas on the history kept in Redis (engines/redis.py runs them): `--history-max-rooms`,
`--history-max-bytes`, `--history-max-age`, as engines/sqlite_quotas.py does for the file.

What counts. Rooms: those with history, in `roomchat:history` (INDEX, a sorted set: room -> when it was
last written to, ms; each process adds what it wrote at its next beat). Bytes: Redis's own
`used_memory` (INFO memory): everything in that Redis, roomchat's keys and Redis's overhead.
Age: a chat's `ts`.

What goes. Past the room or byte quota, the rooms quiet longest are forgotten first, whole (not
the oldest events of every room: Redis cannot find those without reading each room). Past the
age, a room quiet for longer is forgotten, and an active room loses the chats older than that
(a prefix of its `hist`, and its `log` up to the same place). A room with members on any
process is never forgotten (FORGET checks, atomically with the deletion).

Forgetting deletes the room's history and membership keys (`seq`, `hist`, `cur`, `log`, `idem`,
`members`, `owners`, `joins`, `ver`; on a Redis Cluster the engine then drops the rooms'
fields of ROOM_VERSIONS); its topic, bans and mutes are rules and stay (bans and mutes
expire). Its seqs are never given out again: FORGET raises the seq floor of the room's hash
slot to its seq in the same call (redis_scripts.floor_key), and a room with no counter starts
above its slot's floor (PUBLISH, ANNOUNCE).

One process at a time runs a pass (it holds `roomchat:quotas` for a beat), at most once a beat,
on its heartbeat thread, a bounded amount of work per pass (FORGET_CHUNK rooms, AGE_ROOMS rooms
trimmed), so a backlog is worked off over several beats.
"""

import logging
import threading
import time

import orjson

from chatserver.engines.redis_scripts import floor_key, room_key

log = logging.getLogger("roomchat.redis")

INDEX = "roomchat:history"
FORGET_CHUNK = 500  # rooms forgotten per pass, at most
SCAN_MAX = 2000  # rooms looked at per search for rooms to forget, at most (those someone is in are skipped)
BYTES_STEP = 50  # rooms forgotten between two looks at used_memory
AGE_ROOMS = 50  # active rooms whose old chats are trimmed per pass, at most
AGE_READ = 500  # chats read per room and pass to find where the age cut falls


class RedisQuotas:
    """The three quotas (0: none) over one Redis, and the index of rooms with history.

    `touch` is called by any thread (it records under `_lock`); `run` by the heartbeat thread
    only. Raises what a call to Redis raises from `run` (tried again at the next beat)."""

    def __init__(self, max_bytes: int = 0, max_age: float = 0, max_rooms: int = 0):
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.max_rooms = max_rooms
        self._lock = threading.Lock()
        self._touched: dict[str, int] = {}  # room -> ms of its last write here since the last beat

    def touch(self, room: str) -> None:
        """The room was written to (a chat, a join): it is in the index and not quiet."""
        with self._lock:
            self._touched[room] = int(time.time() * 1000)

    def run(self, redis, scripts: dict, lease: str, every_ms: int, used_memory) -> list:
        """Add what was written since the last beat to the index; then, if no other process does,
        one pass. `used_memory()`: Redis's (on a Redis Cluster, its fullest node's). Returns the
        rooms forgotten."""
        with self._lock:
            touched, self._touched = self._touched, {}
        if touched:
            scripts["touch"](keys=[INDEX], args=[x for room, ms in touched.items() for x in (ms, room)])
        if not (self.max_bytes or self.max_age or self.max_rooms):
            return []
        if not scripts["quota_turn"](keys=["roomchat:quotas"], args=[lease, every_ms]):
            return []
        forgotten: list = []
        if self.max_age:
            cutoff = int((time.time() - self.max_age) * 1000)
            kept: list = []
            forgotten += self._forget_quietest(redis, scripts, FORGET_CHUNK, f"({cutoff}", kept)
            active = [r.decode() for r in redis.zrangebyscore(INDEX, cutoff, "+inf", start=0, num=AGE_ROOMS)]
            self._trim_older(redis, kept[:AGE_ROOMS] + active, cutoff / 1000)  # kept: someone is in them
        if self.max_rooms:
            excess = min(redis.zcard(INDEX) - self.max_rooms, FORGET_CHUNK)
            if excess > 0:
                forgotten += self._forget_quietest(redis, scripts, excess)
        if self.max_bytes:
            while len(forgotten) < FORGET_CHUNK and used_memory() > self.max_bytes:
                gone = self._forget_quietest(redis, scripts, BYTES_STEP)
                if not gone:
                    break
                forgotten += gone
        if forgotten:
            log.info("history quotas: %d rooms forgotten (their seqs are never given out again)", len(forgotten))
        return forgotten

    def _forget_quietest(self, redis, scripts: dict, most: int, before: str = "+inf", kept: list | None = None) -> list:
        """Forget up to `most` rooms nobody is in, quiet longest first, of those last written to
        `before` (ms; "(" for strictly), looking at SCAN_MAX rooms at most; the rooms looked at and
        kept (someone is in them) are added to `kept`. Returns those forgotten."""
        gone: list = []
        for offset in range(0, SCAN_MAX, FORGET_CHUNK):
            rooms = [r.decode() for r in redis.zrangebyscore(INDEX, "-inf", before, start=offset - len(gone),
                                                             num=FORGET_CHUNK)]
            pipe = redis.pipeline(transaction=False)
            for room in rooms:
                pipe.zcard(room_key(room, "members"))
                pipe.get(room_key(room, "seq"))
            found = pipe.execute()
            for room, members, seq in zip(rooms, found[::2], found[1::2], strict=True):
                # (members are checked again by FORGET, atomically; this spares the floor live rooms' seqs)
                if len(gone) < most and not members and self._forget(scripts, room, seq):
                    redis.zrem(INDEX, room)
                    gone.append(room)
                elif kept is not None:
                    kept.append(room)
            if len(gone) >= most or len(rooms) < FORGET_CHUNK:
                break
        return gone

    def _forget(self, scripts: dict, room: str, seq: bytes | None) -> bool:
        """Forget the room if nobody is in it and its seq is still `seq` (its slot's floor raised
        to it); True if it was."""
        keys = [room_key(room, part) for part in ("seq", "hist", "log", "idem", "members", "owners", "joins", "ver")]
        return bool(scripts["forget"](keys=[*keys, floor_key(room), room_key(room, "cur")],
                                      args=[seq if seq is not None else b"0"]))

    def _trim_older(self, redis, rooms: list, cutoff: float) -> None:
        """Delete each room's chats stored before `cutoff` (seconds), a prefix of its history, and
        its log up to the same place (its first chat is looked at first: most rooms stop there)."""
        pipe = redis.pipeline(transaction=False)
        for room in rooms:
            pipe.xrange(room_key(room, "hist"), "-", "+", count=1)
        for room, first in zip(rooms, pipe.execute(), strict=True):
            if not first or orjson.loads(first[0][1][b"e"])["ts"] >= cutoff:
                continue
            entries = redis.xrange(room_key(room, "hist"), "-", "+", count=AGE_READ)
            keep = next((_seq(i) for i, f in entries if orjson.loads(f[b"e"])["ts"] >= cutoff), None)
            if keep is None:  # all of these are old; the next pass goes on
                keep = _seq(entries[-1][0]) + 1
            redis.xtrim(room_key(room, "hist"), minid=f"0-{keep}")
            redis.zremrangebyscore(room_key(room, "cur"), "-inf", f"({keep}")  # edited chats' states
            redis.xtrim(room_key(room, "log"), minid=f"{keep - 1}-0")


def _seq(entry_id: bytes) -> int:
    """The seq of a chat in a room's `hist` (entry id `0-<seq>`)."""
    return int(entry_id.split(b"-")[1])
