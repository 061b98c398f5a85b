"""engines/: what orders, stores and spreads each room's events (the contract: base.py).

base (the Engine interface, LocalRules, and the memory engine MemoryEngine for tests and
`--db :memory:`), sqlite (the default: one process, history in a file) with sqlite_file (schema
and opening), sqlite_readers (the read pool) and sqlite_quotas, redis (several processes as one
server) with redis_directory (nicks, members, DMs, rules) and redis_scripts (its Lua).

May import: engines.base, ops (metrics), protocol, errors; an engine's own helpers. Only
sqlite* imports sqlite3 and only redis* imports redis. (redis.py also asks rooms.moderation which
events remove a member: a known exception, listed in tests/unit/test_layout.py.)
"""
