"""engines/: what orders, stores and spreads each room's events (the contract: base.py).

base (the Engine and ClusterEngine interfaces, the Registry they call back, LocalRules), memory
(MemoryEngine: tests and `--db :memory:`, with the same quotas), sqlite (the default: one process,
history in a file) with sqlite_file (schema and opening), sqlite_readers (the read pool),
sqlite_quotas and sqlite_search (the FTS5 index of the chats), redis (several processes as one
server: streams, leases and fencing, the directory of nicks, members and DMs) with redis_scripts
(its Lua), redis_runner (its writes on one Redis: EVALSHA on connections of its own; its pool) and
redis_quotas (the history quotas on Redis). personal (read markers and DMs that
wait, per identity, for the memory and SQLite engines), sqlite_personal (written through to the
file) and redis_personal (the same in Redis).

May import: engines.base, ops (metrics), protocol, errors; an engine's own helpers. Only
sqlite* imports sqlite3 and only redis* imports redis. (redis.py also asks rooms.moderation which
events remove a member: a known exception, listed in tests/unit/test_layout.py.)
"""
