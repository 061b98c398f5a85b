"""The Lua scripts of the Redis engine (engines/redis.py). Each touches the keys of one room only
(one hash tag), so they also run on Redis Cluster. Redis runs a script atomically: nothing else
happens between its INCR, XADD and PUBLISH.
"""

# KEYS: seq (counter), hist (stream); ARGV: channel, maxlen, n, then n times (event json up to its
# seq, the rest of the json, origin json). Returns the seqs given.
PUBLISH = """
local n = tonumber(ARGV[3])
local seqs = {}
for i = 0, n - 1 do
  local seq = redis.call('INCR', KEYS[1])
  local event = ARGV[4 + 3 * i] .. seq .. ARGV[5 + 3 * i]
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. seq, 'e', event, 'o', ARGV[6 + 3 * i])
  redis.call('PUBLISH', ARGV[1], ARGV[6 + 3 * i] .. '\\n' .. event)
  seqs[i + 1] = seq
end
return seqs
"""
# KEYS: seq, members (zset nick -> join order), owners (hash nick -> owner), joins (counter)
# ARGV: channel, kind (join, leave, nick; remove: a kick or ban takes `nick` out; anything else
# changes no membership), nick, owner, event json, origin json without its last `at` element, old nick
ANNOUNCE = """
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
local kind, nick, owner = ARGV[2], ARGV[3], ARGV[4]
if kind == 'join' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), nick)
  redis.call('HSET', KEYS[3], nick, owner)
elseif kind == 'leave' then
  if redis.call('HGET', KEYS[3], nick) ~= owner then return -1 end
  redis.call('ZREM', KEYS[2], nick)
  redis.call('HDEL', KEYS[3], nick)
elseif kind == 'remove' then
  redis.call('ZREM', KEYS[2], nick)
  redis.call('HDEL', KEYS[3], nick)
elseif kind == 'nick' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[7])
  if score and redis.call('HGET', KEYS[3], ARGV[7]) == owner then
    redis.call('ZREM', KEYS[2], ARGV[7])
    redis.call('HDEL', KEYS[3], ARGV[7])
    redis.call('ZADD', KEYS[2], score, nick)
    redis.call('HSET', KEYS[3], nick, owner)
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[6] .. at .. ']\\n' .. ARGV[5])
return redis.call('ZCARD', KEYS[2])
"""
IF_OWNER_DELETE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
IF_OWNER_PREFIX_DELETE = (
    "local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then"
    " return redis.call('DEL', KEYS[1]) end return 0"
)
IF_OWNER_EXPIRE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
# KEYS: a reserved nick's key; ARGV: nick, milliseconds. A reservation only ever grows (PTTL is
# -2 for a missing key).
RESERVE = (
    "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then"
    " return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 0"
)
