"""Read markers and DMs that wait, per identity, in Redis (the RedisEngine's share of them); the
read markers of a connection without a token, kept with its resume session.

An identity is a token's folded nick (protocol.fold_nick: letters, digits, `_ . -`, never a
brace). Its keys share the hash tag `{id:<identity>}`, so each script below touches one slot of
a Redis Cluster, as a room's scripts do:
- `roomchat:{id:<identity>}:marks`: hash room -> seq (its read markers);
- `roomchat:{id:<identity>}:marked`: sorted set room -> when marked (microseconds of Redis's
  clock); past MAX_MARKS rooms, those marked longest ago are forgotten in the same script;
- `roomchat:{id:<identity>}:dms`: list of DM events (JSON) waiting, oldest first; at most the
  caller's `most` (`--offline-dms`): KEEP_DM refuses one more.
None of them expires: they are bounded per identity, and identities are the token nicks seen.
At Redis's `maxmemory` a new mark or kept DM is refused (Unavailable); taking DMs still works.

A connection without a token keeps its read markers with its resume session (RedisEngine's
`set_session_mark`), so they follow a resume to any process: `roomchat:{session:<marks id>}:marks`
and `:marked`, as above, under the hash tag `{session:<marks id>}` (the id is random, kept in the
session's value and the same for every token the session is kept under). Each write gives them
the session's whole window, as the session gets when it is kept and renewed (with them): they
expire with it, at most half a window later, and are deleted when it ends.
"""

import orjson

from chatserver.engines.redis_scripts import room_key
from chatserver.protocol import MAX_MARKS

# KEYS: marks, marked. ARGV: room, seq, most[, milliseconds both keys live from now]. The mark
# now (never lower than it was).
SET_MARK = """
local seq = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0'), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', seq))
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] * 1000000 + t[2], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local gone = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('HDEL', KEYS[1], unpack(gone))
end
if ARGV[4] then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return string.format('%.0f', seq)
"""

# KEYS: marks, marked. ARGV: most. {room, seq, room, seq, ...}, the room marked last first.
MARKS = """
local rooms = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
if #rooms == 0 then return {} end
local seqs = redis.call('HMGET', KEYS[1], unpack(rooms))
local out = {}
for i, room in ipairs(rooms) do
  if seqs[i] then out[#out + 1] = room out[#out + 1] = seqs[i] end
end
return out
"""

# KEYS: dms. ARGV: event json, most. 1 if kept, 0 when `most` wait already.
KEEP_DM = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""

# KEYS: dms. Every DM waiting, oldest first, and none left: each is handed out once.
TAKE_DMS = """
local all = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return all
"""

SCRIPTS = {"set_mark": SET_MARK, "marks": MARKS, "keep_dm": KEEP_DM, "take_dms": TAKE_DMS}


def identity_key(identity: str, part: str) -> str:
    """A key of identity `identity`'s (all of them share the hash tag `{id:<identity>}`: one slot)."""
    return f"roomchat:{{id:{identity}}}:{part}"


def session_marks_keys(marks_id: str) -> list:
    """[marks, marked] of a resume session's read markers (one hash tag: one slot)."""
    return [f"roomchat:{{session:{marks_id}}}:{part}" for part in ("marks", "marked")]


class RedisPersonal:
    """engines.base.Engine's set_mark, marks, mark, keep_dm, take_dms and ClusterEngine's
    member_count, for RedisEngine (a mixin: it uses the engine's `_redis` and `_call`, which
    Raises Unavailable). Any thread."""

    def _personal(self, name: str):
        """The registered script `name` of SCRIPTS (registered once, on first use)."""
        scripts = self.__dict__.setdefault("_personal_scripts", {})
        if name not in scripts:
            scripts[name] = self._redis.register_script(SCRIPTS[name])
        return scripts[name]

    def set_mark(self, identity: str, room: str, seq: int) -> int:
        keys = [identity_key(identity, "marks"), identity_key(identity, "marked")]
        return int(self._call(self._personal("set_mark"), keys=keys, args=[room, seq, MAX_MARKS]))

    def marks(self, identity: str) -> dict:
        keys = [identity_key(identity, "marks"), identity_key(identity, "marked")]
        flat = self._call(self._personal("marks"), keys=keys, args=[MAX_MARKS])
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def mark(self, identity: str, room: str) -> int | None:
        seq = self._call(self._redis.hget, identity_key(identity, "marks"), room)
        return None if seq is None else int(seq)

    def keep_dm(self, identity: str, event: dict, most: int) -> bool:
        kept = self._call(self._personal("keep_dm"), keys=[identity_key(identity, "dms")],
                          args=[orjson.dumps(event), most])
        return bool(kept)

    def take_dms(self, identity: str) -> list:
        return [orjson.loads(e) for e in self._call(self._personal("take_dms"), keys=[identity_key(identity, "dms")])]

    def member_count(self, room: str) -> int:
        return int(self._call(self._redis.zcard, room_key(room, "members")))
