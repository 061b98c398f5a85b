"""ops/: what an operator sees: metrics (Prometheus `/metrics`), logs (text or JSON lines), trace
(the teaching trace, `--trace`), web (plain HTTP: the chat page, static files, health, metrics).

May import: wire (handshake for plain HTTP, proxies for who may scrape), protocol, errors. Every
part may import ops.trace and count into ops.metrics; ops.trace itself imports nothing of ours.
"""
