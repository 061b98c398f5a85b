"""The Redis engine's directory: who holds which nick, room members, DMs, room rules and nicks
reserved by tokens. RedisEngine (engines/redis.py) is built on it; this half uses the engine's
`_redis`, `_call`, `_lock` (guards `_claims`), `process_id`, `_ttl_ms` and `_hub`.

Keys. Nicks are `roomchat:nick:<folded>` = "<process>:<client>:<nick>" (protocol.fold_nick, so
look-alikes share one key), taken with SET NX and a TTL that the heartbeat refreshes. A nick
reserved by a token is `roomchat:reserved:<folded>` = nick, with the token's remaining lifetime
as TTL. A room's topic is `roomchat:{<room>}:topic`, its mode `roomchat:{<room>}:mode` =
"<0|1>:<slow seconds>"; the uses taken of an invite `roomchat:invite:<id>`, with the invite's
remaining lifetime as TTL; a ban or mute is
`roomchat:{<room>}:ban:<folded>` (or `:mute:`) with the remaining time as TTL, so Redis forgets
it when it ends. A process asks another to let go of a nick (`take_nick`) with `[client, null]`
on `roomchat:proc:<id>:dm`.
"""

import logging
import time

import orjson
import redis

from chatserver.engines.base import Unavailable
from chatserver.engines.redis_scripts import RESERVE
from chatserver.protocol import fold_nick

log = logging.getLogger("roomchat.redis")

# KEYS[1] the invite's count, ARGV uses and the invite's remaining lifetime (ms): the number of
# this use, or nil when all are taken. One script, so two people never take the last use.
USE_INVITE = """
local taken = tonumber(redis.call('GET', KEYS[1]) or '0')
if taken >= tonumber(ARGV[1]) then return nil end
redis.call('SET', KEYS[1], taken + 1, 'PX', ARGV[2])
return taken + 1
"""
TAKE_POLL = 0.05  # seconds between claims while a nick's holder lets go of it


def room_key(room: str, part: str) -> str:
    return f"roomchat:{{{room}}}:{part}"


def nick_key(nick: str) -> str:
    return f"roomchat:nick:{fold_nick(nick)}"


class RedisDirectory:
    """Nicks, members, rooms, DMs and room rules, cluster-wide. Methods Raise Unavailable."""

    def claim_nick(self, nick: str, owner: str) -> bool:
        key, value = nick_key(nick), f"{owner}:{nick}"
        if not self._call(self._redis.set, key, value, nx=True, px=self._ttl_ms):
            return False
        self._call(self._redis.sadd, f"roomchat:proc:{self.process_id}:nicks", key)
        with self._lock:
            self._claims[key] = value
        return True

    def take_nick(self, nick: str, owner: str, timeout: float) -> bool:
        """Claim `nick` for the holder of its token, asking the connection that has it to let go
        (its process renames or replaces it: Hub.evict). False if it is still held after `timeout`
        seconds (a holder on a dead process lets go when its claim expires, within the TTL)."""
        deadline = time.monotonic() + timeout
        asked = None
        while not self.claim_nick(nick, owner):
            held = self._call(self._redis.get, nick_key(nick))
            if held is not None and held != asked:
                process, client, _ = held.decode().split(":", 2)
                self._call(self._redis.publish, f"roomchat:proc:{process}:dm", orjson.dumps([int(client), None]))
                asked = held
            if time.monotonic() >= deadline:
                return False
            time.sleep(TAKE_POLL)
        return True

    def release_nick(self, nick: str, owner: str) -> None:
        key = nick_key(nick)
        with self._lock:
            value = self._claims.pop(key, None)
        if value is not None:
            try:
                self._if_owner_delete(keys=[key], args=[value])
                self._redis.srem(f"roomchat:proc:{self.process_id}:nicks", key)
            except redis.RedisError as exc:  # it expires by itself within the TTL
                log.warning("nick %s not released: %s", nick, exc)

    def members(self, room: str) -> list:
        return [m.decode() for m in self._call(self._redis.zrange, room_key(room, "members"), 0, -1)]

    def rooms(self) -> list:
        rooms = self._call(self._redis.zrange, "roomchat:rooms", 0, -1, withscores=True)
        return sorted(({"room": r.decode(), "members": int(n)} for r, n in rooms), key=lambda r: r["room"])

    def send_dm(self, nick: str, event: dict) -> str | None:
        """Route a DM to the process holding `nick`; returns its nick as spelled, None if nobody."""
        owner = self._call(self._redis.get, nick_key(nick))
        if owner is None:
            return None
        process, client, spelled = owner.decode().split(":", 2)
        event = {**event, "to": spelled}
        if process == self.process_id:
            self._hub.deliver_dm(int(client), event)
        else:
            self._call(self._redis.publish, f"roomchat:proc:{process}:dm", orjson.dumps([int(client), event]))
        return spelled

    # -- room rules and reserved nicks (engine.Engine) ------------------------------------------

    def reserve_nick(self, nick: str, until: float) -> None:
        ms = int((until - time.time()) * 1000)
        if ms > 0:
            self._call(self._redis.eval, RESERVE, 1, f"roomchat:reserved:{fold_nick(nick)}", nick, ms)

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
        if ms > 0:
            self._call(self._redis.set, key, "", px=ms)
        else:
            self._call(self._redis.delete, key)

    def restricted_until(self, room: str, kind: str, nick: str) -> float | None:
        return self._until(room_key(room, f"{kind}:{fold_nick(nick)}"))

    def set_mode(self, room: str, moderated: bool, slow: int) -> None:
        if moderated or slow:
            self._call(self._redis.set, room_key(room, "mode"), f"{int(moderated)}:{slow}")
        else:
            self._call(self._redis.delete, room_key(room, "mode"))

    def mode(self, room: str) -> tuple[bool, int]:
        value = self._call(self._redis.get, room_key(room, "mode"))
        moderated, slow = (value.decode() if value else "0:0").split(":")
        return moderated == "1", int(slow)

    def use_invite(self, invite: str, uses: int, until: float) -> int | None:
        ms = int((until - time.time()) * 1000)
        if ms <= 0:
            return None
        taken = self._call(self._redis.eval, USE_INVITE, 1, f"roomchat:invite:{invite}", uses, ms)
        return None if taken is None else int(taken)

    def invite_uses(self, invite: str) -> int:
        return int(self._call(self._redis.get, f"roomchat:invite:{invite}") or 0)

    def _until(self, key: str) -> float | None:
        ms = self._call(self._redis.pttl, key)
        return time.time() + ms / 1000 if ms > 0 else None

    def _call(self, command, *args, **kwargs):
        """Run a Redis command or script; Raises Unavailable when Redis cannot be reached."""
        try:
            return command(*args, **kwargs)
        except redis.RedisError as exc:
            self._problem = f"Redis unreachable: {exc}"
            if getattr(self, "_metrics", None) is not None:
                self._metrics.engine_errors.inc()
            raise Unavailable("Redis is unreachable") from None
