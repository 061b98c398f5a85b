"""The Lua scripts of the Redis engine (engines/redis.py). Redis runs a script atomically: nothing
else happens between its checks, its writes and its PUBLISH. Times are Redis's own (TIME), in
milliseconds, so every process judges leases by one clock.

Idempotency (Centrifugo's publish, `broker_history_add_stream.lua`): every write a request makes
carries a key, kept in the room's `idem` sorted set for at least ten minutes (score: the time
written; negative: cancelled). Older keys are trimmed by PUBLISH when the room's seq passes a
multiple of 64 and by ANNOUNCE and AMEND at every call, so a quiet room may keep up to 63 older
keys until its next trim; a key is unique to its request, so keeping it longer changes nothing.
A write whose key is there already does nothing, so a call whose outcome is unknown (a timeout,
a broken link) can be sent again; `RESOLVE` settles such a key for good: written, or cancelled
so that a late copy of the write can never take effect.

The scripts of a room touch its keys (one hash tag); on one Redis, ANNOUNCE also writes ROOMS
and the process's membership index, so membership, room counts and the index change together;
a room's counter starts at its hash slot's seq floor (`floor_key`: PUBLISH, ANNOUNCE), the
highest seq any forgotten room of that slot had (FORGET: redis_quotas.py). On a Redis Cluster
every script touches one slot: the room counts and the process's membership index are then
written apart, after ANNOUNCE (COUNT: versioned, so no count is written from a stale read), put
right by each process every beat when a write apart was lost (RECOUNT; engines/redis.py, Repair),
and PUBLISH becomes SPUBLISH (sharded pub/sub).

At Redis's `maxmemory` (noeviction), Redis refuses a script's first write that may grow memory.
The scripts in OOM_OK are flagged `allow-oom` (Redis 7; `oom_ok`): the lease, nick claims,
leaves and nick changes, settling, forgetting. So at maxmemory the processes stay alive to one
another, newcomers get a nick, members can leave, and the quotas can free memory; chats and joins
are refused (`unavailable`).
"""

import binascii
from itertools import repeat

from redis.crc import key_slot

LEASES = "roomchat:{leases}"  # lease -> expiry (ms); REAPING beside it, in its slot
REAPING = "roomchat:{leases}:reaping"
# when a beat last landed (`last`), and when one landed after none had for longer than a lease
# (`back`: the leases' node was stalled, failing over or restarting, or every process paused), ms
# of Redis's clock; in LEASES's slot
BEATS = "roomchat:{leases}:beats"
EPOCH = "roomchat:epoch"  # the epoch of the history the rooms' seqs count in (NEXT_EPOCH)
ROOMS = "roomchat:{rooms}"  # room -> members, for `rooms`; ROOM_VERSIONS beside it
ROOM_VERSIONS = "roomchat:{rooms}:ver"
_SLOT_TAGS: list = []  # slot -> a hash tag in that slot (slot_tags(), made when first needed)
_TAGS_END = 109758  # the decimal numbers below this one reach every slot (109757 is the smallest in its slot)


def room_key(room: str, part: str) -> str:
    """A key of room `room`'s (all of them share the hash tag `{<room>}`: one slot)."""
    return f"roomchat:{{{room}}}:{part}"


def floor_key(room: str) -> str:
    """The seq floor of the rooms in `room`'s hash slot (the highest seq any forgotten room there
    had): a key in that slot, so that a room's scripts read it and FORGET raises it with the
    room's own keys, on one Redis or a Redis Cluster alike."""
    if not _SLOT_TAGS:
        _SLOT_TAGS.extend(slot_tags())
    return f"roomchat:{{{_SLOT_TAGS[key_slot(room_key(room, 'seq').encode())]}}}:floor"


def slot_tags() -> list[str]:
    """Slot -> its hash tag: the smallest decimal number in that slot ("0" up to "109757"). These
    name the floor keys stored in Redis, so they never change. Made in one pass of C calls (map,
    dict; no Python line per number): about 0.05 s at start-up, also under coverage's line tracer,
    where a loop of Python lines took 0.15-0.25 s."""
    names = list(map(str, range(_TAGS_END - 1, -1, -1)))  # highest first: the smallest of a slot is put last
    crcs = map(binascii.crc_hqx, map(str.encode, names), repeat(0))
    tags = dict(zip(map(int.__and__, crcs, repeat(16383)), names, strict=True))
    return list(map(tags.__getitem__, range(16384)))


_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
_TRIM = (  # forget idempotency keys older than ten minutes (written ones: > 0, cancelled: < 0)
    "redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, now - 600000) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[3], -(now - 600000), '(0')\n"
)

# KEYS: seq (counter), hist (stream), idem, owners, the slot's seq floor, the room's mode, the
# sender's mute. ARGV: channel, maxlen, n, lowest seq this process has delivered (the counter
# below it means the history was replaced), owner ('' for a chat posted over the HTTP API: its
# sender is no member, nothing to fence), the mode the chats were let through under ('-': not
# checked), then n times (sender nick, event json up to its seq, the rest of the json, origin
# json, key). The chats written go out in one message (origin json and event json, each on its
# line, for each chat in turn). Returns {1, r1..rn} with r = the seq given, 0 (written already), -2 (the sender is
# not a member by this owner: fenced), -3 (cancelled), -4 (not written: the mode is not the one
# given, or the sender is muted: the rules changed since they were read); or {-1, counter} when
# the counter went back.
PUBLISH = _NOW + """
local changed = ARGV[6] ~= '-' and ((redis.call('GET', KEYS[6]) or '') ~= ARGV[6] or
                                    redis.call('PTTL', KEYS[7]) > 0)
local cur = tonumber(redis.call('GET', KEYS[1]) or redis.call('GET', KEYS[5]) or '0')
if cur < tonumber(ARGV[4]) then return {-1, cur} end
local n = tonumber(ARGV[3])
local out = {1}
local message, written, member, keys = {}, {}, {}, {}
for i = 0, n - 1 do keys[i + 1] = ARGV[11 + 5 * i] end
local seen = {}  -- each chat's key in idem: its score, or false
for j = 1, n, 1000 do
  local part = redis.call('ZMSCORE', KEYS[3], unpack(keys, j, math.min(j + 999, n)))
  for k = 1, #part do seen[j + k - 1] = part[k] end
end
local first, stamp = cur, tostring(now)  -- numbers made strings once (each is a printf)
for i = 0, n - 1 do
  local b = 7 + 5 * i
  local key = ARGV[b + 4]
  local done = seen[i + 1]
  if done then
    out[i + 2] = tonumber(done) < 0 and -3 or 0
  elseif changed then
    out[i + 2] = -4
  else
    if ARGV[5] ~= '' and member[ARGV[b]] == nil then  -- looked up once per sender
      member[ARGV[b]] = redis.call('HGET', KEYS[4], ARGV[b]) == ARGV[5]
    end
    if ARGV[5] ~= '' and not member[ARGV[b]] then
      out[i + 2] = -2
    else
      cur = cur + 1
      local seq = tostring(cur)
      local event = ARGV[b + 1] .. seq .. ARGV[b + 2]
      redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. seq, 'e', event, 'o', ARGV[b + 3])
      message[#message + 1] = ARGV[b + 3]
      message[#message + 1] = event
      written[#written + 1] = stamp
      written[#written + 1] = key
      out[i + 2] = cur
    end
  end
end
if #written > 0 then  -- the counter, the keys and the message once for all the chats written
  redis.call('SET', KEYS[1], cur)
  for j = 1, #written, 1000 do
    redis.call('ZADD', KEYS[3], unpack(written, j, math.min(j + 999, #written)))
  end
  redis.call('PUBLISH', ARGV[1], table.concat(message, '\\n'))
end
if math.floor(first / 64) ~= math.floor(cur / 64) then  -- trimmed every 64 seqs, not every call
""" + _TRIM + "end\nreturn out\n"

# Edit, delete and react (engines/redis.py `amend`). The event goes into `hist` like a chat; the
# state of the chat it changes is kept in `cur`, a sorted set (score: a seq; member: "<the seqs of
# its edits, space-separated>\n<history item json>"), which overrides `hist` when read; a delete
# takes the chat and its edits out of `hist` (XDEL) and keeps in `cur` what is left of them. The
# caller computed the new state from `cur` and `hist` as it read them (its fold, in Python):
# written only if `cur` still holds what it read (compare and set), else -5 and it reads again.
# KEYS: seq, hist, idem, owners, the slot's seq floor, cur. ARGV: 1 channel, 2 maxlen, 3 lowest seq
# delivered here, 4 owner, 5 sender nick, 6 target seq, 7 the target's member as read ('' none),
# 8 '1' if the target was read from `hist` (it must still be there), 9 its edits as they will be,
# 10 its new json ('' unchanged), 11 '1' to add this event's seq to its edits (an edit), 12 event
# json up to its seq, 13 the rest, 14 origin json, 15 key, 16 '1' to take the target out of `hist`,
# then pairs (seq, json) of events to take out of `hist` and keep in `cur` as given (a delete's edits).
# Returns {1, seq} | {0} written already | {-3} cancelled | {-2} fenced | {-1, counter} | {-5} changed meanwhile.
AMEND = _NOW + """
local key, target = ARGV[15], ARGV[6]
local done = redis.call('ZSCORE', KEYS[3], key)
if done then return {tonumber(done) < 0 and -3 or 0} end
if redis.call('HGET', KEYS[4], ARGV[5]) ~= ARGV[4] then return {-2} end
local cur = tonumber(redis.call('GET', KEYS[1]) or redis.call('GET', KEYS[5]) or '0')
if cur < tonumber(ARGV[3]) then return {-1, cur} end
local have = redis.call('ZRANGEBYSCORE', KEYS[6], target, target)[1] or ''
if have ~= ARGV[7] then return {-5} end
if ARGV[8] == '1' and #redis.call('XRANGE', KEYS[2], '0-' .. target, '0-' .. target) == 0 then return {-5} end
cur = cur + 1
local seq = cur
redis.call('SET', KEYS[1], seq)
local event = ARGV[12] .. seq .. ARGV[13]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. seq, 'e', event, 'o', ARGV[14])
if ARGV[10] ~= '' then
  local edits = ARGV[9]
  if ARGV[11] == '1' then edits = (edits == '' and '' or edits .. ' ') .. seq end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], target, target)
  redis.call('ZADD', KEYS[6], target, edits .. '\\n' .. ARGV[10])
end
if ARGV[16] == '1' then redis.call('XDEL', KEYS[2], '0-' .. target) end
for i = 17, #ARGV, 2 do
  redis.call('XDEL', KEYS[2], '0-' .. ARGV[i])
  redis.call('ZREMRANGEBYSCORE', KEYS[6], ARGV[i], ARGV[i])
  redis.call('ZADD', KEYS[6], ARGV[i], '\\n' .. ARGV[i + 1])
end
-- what `cur` keeps of events older than the room's window (and than `hist`'s first) goes
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local below = seq - tonumber(ARGV[2]) + 1
if first then below = math.min(below, tonumber(string.sub(first[1], 3))) end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. below)
redis.call('PUBLISH', ARGV[1], ARGV[14] .. '\\n' .. event)
redis.call('ZADD', KEYS[3], now, key)
""" + _TRIM + "return {1, seq}\n"

# KEYS: seq, log (stream of room events other than chats, id <at>-<k>), idem, members (zset nick
# -> join order), owners (hash nick -> owner), joins (counter), ban key of `nick`, the room's
# slot's seq floor, ver (the room's membership version); then, on one Redis only (not a cluster:
# other slots), the room counts (ROOMS) and the origin process's membership index (set of
# "room\\nnick\\nowner"). ARGV: channel, kind (join, leave, nick; remove: a kick or ban takes
# `nick` out; anything else changes no membership), nick, owner, event json, origin json without
# its closing ']', old nick, key ('' for none), maxlen, room, '1' if the last two keys are given,
# the presence leave of `nick` and its origin json without its closing ']' (no origin: every
# member gets it). A join or rename to `nick` over its membership by another client (its owner
# but for the lease generation, "<process>.<generation>:<client>", differs) first takes that
# member out with that leave, in the log and published before the join or nick change; the other
# client's own leave then finds another owner and does nothing. (Its process's membership index
# keeps its entry until that process is reaped: the reaper's leave then does nothing either.)
# Each log entry keeps its time ('t', ms). A remove that took `nick` out of the members says so,
# in its log entry ('r' 1) and as a last element 1 of its published origin, so every process
# gives the room that member's presence leave right after it (rooms/cluster.py); a remove of a
# nick that is no member says nothing. Returns {1, members, version} when published (version:
# of the membership, microseconds of Redis's clock at least, for a count written apart: COUNT);
# {0} written already (or a join of a member by this owner); {-3} cancelled; {-1} nothing to
# announce (a leave or nick change by one who is not a member by this owner); {-4} banned (join).
ANNOUNCE = _NOW + """
local kind, nick, owner, key, old, room = ARGV[2], ARGV[3], ARGV[4], ARGV[8], ARGV[7], ARGV[10]
local shared = ARGV[11] == '1'
if key ~= '' then
  local done = redis.call('ZSCORE', KEYS[3], key)
  if done then return {tonumber(done) < 0 and -3 or 0} end
end
if kind == 'join' and redis.call('EXISTS', KEYS[7]) == 1 then return {-4} end
if kind == 'join' and redis.call('HGET', KEYS[5], nick) == owner then return {0} end
if kind == 'leave' and redis.call('HGET', KEYS[5], nick) ~= owner then return {-1} end
local score = nil
if kind == 'nick' then
  score = redis.call('ZSCORE', KEYS[4], old)
  if not score or redis.call('HGET', KEYS[5], old) ~= owner then return {-1} end
end
local at = tonumber(redis.call('GET', KEYS[1]) or '-1')
if at < 0 then  -- a new (or forgotten) room: its seqs go on above every forgotten room's
  at = tonumber(redis.call('GET', KEYS[8]) or '0')
  redis.call('SET', KEYS[1], at)
end
-- a join of `nick`, or a rename to it, over its membership by another client (whose leave is
-- still on its way: a failover held it while the nick's claim ran out) takes that member out
-- first, with a leave of its own in the log and on the channel, so every view drops it
local other = (kind == 'join' or kind == 'nick') and redis.call('HGET', KEYS[5], nick)
local function client(o) return (string.gsub(o, '%.%d+:', ':', 1)) end  -- the owner but its generation
if other and client(other) ~= client(owner) then
  local lid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], at .. '-*', 'e', ARGV[12], 'o', ARGV[13] .. ']',
                         't', now)
  redis.call('ZREM', KEYS[4], nick)
  redis.call('HDEL', KEYS[5], nick)
  local lk = string.sub(lid, string.find(lid, '-') + 1)
  redis.call('PUBLISH', ARGV[1], ARGV[13] .. ',' .. at .. ',' .. lk .. ']\\n' .. ARGV[12])
end
local removed = kind == 'remove' and redis.call('ZSCORE', KEYS[4], nick) ~= false
local fields = {'e', ARGV[5], 'o', ARGV[6] .. ']', 't', now}
if removed then fields[7] = 'r' fields[8] = '1' end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], at .. '-*', unpack(fields))
local entry, gone = room .. '\\n' .. nick .. '\\n' .. owner, room .. '\\n' .. old .. '\\n' .. owner
if kind == 'join' then
  redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[6]), nick)
  redis.call('HSET', KEYS[5], nick, owner)
  if shared then redis.call('SADD', KEYS[11], entry) end
elseif kind == 'leave' or kind == 'remove' then
  redis.call('ZREM', KEYS[4], nick)
  redis.call('HDEL', KEYS[5], nick)
  if shared then redis.call('SREM', KEYS[11], entry) end
elseif kind == 'nick' then
  redis.call('ZREM', KEYS[4], old)
  redis.call('HDEL', KEYS[5], old)
  redis.call('ZADD', KEYS[4], score, nick)
  redis.call('HSET', KEYS[5], nick, owner)
  if shared then redis.call('SREM', KEYS[11], gone) redis.call('SADD', KEYS[11], entry) end
end
local k = string.sub(id, string.find(id, '-') + 1)
redis.call('PUBLISH', ARGV[1], ARGV[6] .. ',' .. at .. ',' .. k .. (removed and ',1]' or ']') .. '\\n' .. ARGV[5])
local count = redis.call('ZCARD', KEYS[4])
local ver = math.max(tonumber(redis.call('GET', KEYS[9]) or '0') + 1, t[1] * 1000000 + t[2])
redis.call('SET', KEYS[9], string.format('%.0f', ver))
if shared then
  if count > 0 then redis.call('ZADD', KEYS[10], count, room) else redis.call('ZREM', KEYS[10], room) end
end
if key ~= '' then redis.call('ZADD', KEYS[3], now, key) end
""" + _TRIM + "return {1, count, ver}\n"

# KEYS: ROOMS (room -> members), ROOM_VERSIONS (room -> the version its count is of). ARGV: room,
# count, version. On a Redis Cluster, ANNOUNCE's count is written here afterwards: only if no
# later membership of the room was written already (no count from a stale read). Returns 1 if
# written.
COUNT = """
if tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if tonumber(ARGV[2]) > 0 then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
else redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: a room's members, ver (its membership version). ARGV: the version ROOM_VERSIONS holds for
# it ('0': none). On a Redis Cluster, the repair (every beat) of a room count that is not the
# room's: returns {members, version}, the version above the room's and ARGV[1] (and at least
# microseconds of Redis's clock, as ANNOUNCE's), kept as the room's while it has members (an
# empty room gets no key), so COUNT writes this count over every earlier one and a later
# change's count over it.
RECOUNT = """
local t = redis.call('TIME')
local count = redis.call('ZCARD', KEYS[1])
local ver = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, t[1] * 1000000 + t[2], tonumber(ARGV[1]) + 1)
if count > 0 then redis.call('SET', KEYS[2], string.format('%.0f', ver)) end
return {count, ver}
"""

# KEYS: the room's idem set. ARGV: key. Settles a write whose outcome was unknown: 1 if it was
# written; else it is cancelled now (a late copy will do nothing) and 0.
RESOLVE = _NOW + """
local done = redis.call('ZSCORE', KEYS[1], ARGV[1])
if done then return tonumber(done) >= 0 and 1 or 0 end
redis.call('ZADD', KEYS[1], -now, ARGV[1])
return 0
"""

# KEYS: roomchat:leases (lease -> expiry, ms), BEATS. ARGV: lease id, lease ms, 1 if it was
# registered. Returns 1, or 0 when it was registered and is gone: reaped.
BEAT = _NOW + """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or now)
if now - last > tonumber(ARGV[2]) then redis.call('HSET', KEYS[2], 'back', now) end
redis.call('HSET', KEYS[2], 'last', now)
if ARGV[3] == '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: roomchat:leases, roomchat:reaping, BEATS. ARGV: grace ms (as long as a lease). Moves the
# leases that expired more than the grace ago to `reaping` (each to one reaper only: atomically);
# returns every lease there, those another reaper left unfinished included. For a lease and a
# grace after no beat could land (BEATS `back`), it moves none: every process's lease ran out
# meanwhile, and each has that long to renew it (its calls wait out the same fault).
REAP = _NOW + """
local grace = tonumber(ARGV[1])
if now - tonumber(redis.call('HGET', KEYS[3], 'back') or 0) < 2 * grace then
  return redis.call('SMEMBERS', KEYS[2])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - grace, 'LIMIT', 0, 16)
for _, lease in ipairs(dead) do
  redis.call('ZREM', KEYS[1], lease)
  redis.call('SADD', KEYS[2], lease)
end
return redis.call('SMEMBERS', KEYS[2])
"""

# KEYS: a nick's claim. ARGV: value, ms, prefix. Takes the nick if it is free or its holder's
# value starts with `prefix` ('' for none: this process's earlier lease); returns 1, else 0.
CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and (ARGV[3] == '' or string.sub(v, 1, #ARGV[3]) ~= ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: a nick's claim. ARGV: value, ms. Keeps a claim alive: 1 (refreshed), 2 (it had expired:
# taken again), 0 (someone else holds it now).
REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""

IF_OWNER_DELETE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: a key. ARGV: the value it must have, the new value, ms. 1 if it was set, else 0.
IF_VALUE_SET = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) "
                "return 1 end return 0")
# KEYS: EPOCH. ARGV: the epoch a process found a seq lost in, a new one. The new one replaces
# that epoch (or none), never a later one: of the processes (or threads) that each find a loss in
# one epoch, the first starts the next and the others take it. Returns the epoch held after.
NEXT_EPOCH = ("local v = redis.call('GET', KEYS[1]) if not v or v == ARGV[1] then "
              "redis.call('SET', KEYS[1], ARGV[2]) return ARGV[2] end return v")
IF_OWNER_PREFIX_DELETE = (
    "local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then"
    " return redis.call('DEL', KEYS[1]) end return 0"
)
# KEYS: a reserved nick's key; ARGV: nick, milliseconds. A reservation only ever grows (PTTL is
# -2 for a missing key).
RESERVE = (
    "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then"
    " return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 0"
)

# KEYS: an invite's count. ARGV: uses, the invite's remaining lifetime (ms). The number of this
# use, or nil when all are taken: one script, so two people never take the last use.
USE_INVITE = """
local taken = tonumber(redis.call('GET', KEYS[1]) or '0')
if taken >= tonumber(ARGV[1]) then return nil end
redis.call('SET', KEYS[1], taken + 1, 'PX', ARGV[2])
return taken + 1
"""

# KEYS: a nick's claim. ARGV: the value it must have, the new value, ms. Moves a resumed
# client's claim to its new owner if it is still the old owner's: 1, else 0.
CLAIM_MOVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: a room's owners, seq. ARGV: nick, old owner, new owner. Moves a resumed client's
# membership to its new owner if it is still the old owner's (the members are the same: no
# presence): the room's seq, else -1.
OWNER_MOVE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""

# KEYS: a room's seq, hist, log, idem, members, owners, joins, ver, its slot's seq floor, cur. ARGV:
# its seq as read. If nobody is in the room and nothing was written since, raises the floor to
# its seq and deletes its history and membership keys: 1, else 0. (Its topic, bans and mutes are
# rules, not history: they stay; bans and mutes expire.)
FORGET = """
if redis.call('ZCARD', KEYS[5]) > 0 then return 0 end
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
if tonumber(redis.call('GET', KEYS[9]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[9], ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[10])
return 1
"""

# KEYS: roomchat:history. ARGV: pairs of (ms, room). Marks the rooms written to then (never back).
TOUCH = """
for i = 1, #ARGV, 2 do redis.call('ZADD', KEYS[1], 'GT', ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: roomchat:quotas. ARGV: lease, ms. 1 if this process runs the quota pass now.
QUOTA_TURN = "return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"

# KEYS: a room's mute key of a nick, its mode. What a chat call reads, in one round trip:
# {ms the mute has left (-2: none), the mode ("" when none)}.
CHAT_RULES = "return {redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or ''}"

OOM_OK = ("beat", "reap", "claim", "refresh", "if_owner_delete", "if_owner_prefix_delete", "resolve",
          "announce_oom", "forget", "claim_move", "owner_move", "count", "recount", "touch", "quota_turn")


def oom_ok(text: str) -> str:
    """The script flagged to run at Redis's maxmemory (Redis 7 and later)."""
    return "#!lua flags=allow-oom\n" + text
