"""wire/: the protocol's bytes and headers, pure: bytes in, decisions out; no sockets, no threads.

frames (RFC 6455 framing), handshake (the opening HTTP handshake), exposure (Host and Origin
checks), proxies (trusted reverse proxies and what they report).

May import: protocol, errors, ops.trace (the teaching trace's frame hook). Nothing else of the
server: transport/ and ops/ build on it, never the other way round.
"""
