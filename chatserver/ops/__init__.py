"""ops/: what an operator sees: metrics (Prometheus `/metrics`), logs (text or JSON lines), trace
(the teaching trace, `--trace`), web (plain HTTP: the chat page, static files, health, metrics),
api (the HTTP API for bots: post to and read a room with a token), export (`roomchat.py export`: a
room's transcript from a SQLite file or Redis).

May import: wire (handshake for plain HTTP, proxies for who may scrape), protocol, errors. Every
part may import ops.trace and ops.logs and count into ops.metrics; ops.trace itself imports
nothing of ours. export is a command of its own and reads the engines' stores directly.
"""
