"""roomchat's server: the map. `ls chatserver` shows the parts; each folder's __init__ says more.

  protocol.py   the vocabulary, written once: close codes, error codes, request and event types,
                the nick rule, the events the server sends
  errors.py     ChatError (a refused request), CloseConnection, HandshakeError
  config.py     settings: options and ROOMCHAT_* variables
  app.py        wiring: builds the engine, the registry and the transport and joins them up
  wire/         pure: frames, handshake, exposure (Host, Origin), proxies
  transport/    a connection from accept to close, on websocket-server
  rooms/        clients, nicks, rooms, fan-out, the requests, identity, moderation, dispatch
  engines/      the Engine interface (base) and the memory, SQLite and Redis engines
  ops/          metrics, logs, the teaching trace, plain HTTP
  ../handlers/  one module per request type, looked up by rooms/dispatch.py through the table
                roomchat.py hands it (dispatch imports no handler)

Imports run one way (tests/unit/test_layout.py holds them): roomchat.py -> app -> {transport,
rooms, engines, ops}; handlers -> rooms; rooms -> engines.base (never an engine), config, ops,
wire; engines -> engines.base, ops; transport -> wire; ops -> wire; config -> wire. Every part
may use protocol, errors and ops.trace. Only engines/sqlite* import sqlite3, only engines/redis*
import redis, only transport/ imports websocket_server.
"""

__version__ = "1.0.0"
