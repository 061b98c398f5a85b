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

Three requests through the code, and an edit (tests/unit/test_layout.py checks every name below exists):

  one chat: {"type":"chat","room":"lobby","text":"hi"}
    transport.server.Connection.read_messages          the client's own thread reads frames
      wire.frames.FrameReader.next_event               RFC 6455: unmask, limits, UTF-8
      app.ChatServer.on_texts                          messages that arrived together
        rooms.dispatch.Dispatcher.dispatch             a rate token each, decode, the handler
          handlers.chat.handle_many                    check room and text
            rooms.registry.Registry.chat_many          member? rules? (lock) then, no lock held:
              engines.sqlite.SqliteEngine.publish      queued; the writer thread commits a group
    engines.sqlite.SqliteEngine._commit                (writer thread) stored, then:
      rooms.registry.Registry.deliver                  the broadcast, under the registry's lock
        rooms.registry.Registry._deliver_one           encode once, loop over the room's members
          rooms.registry.Registry._recipients          who gets it now (joiners, own copy)
        rooms.registry.Registry._flush_batch           one write per member
          rooms.client.Client.send_mixed               transport.streams.Outbox.put: never blocks

  one join with after: {"type":"join","room":"lobby","after":41}
    rooms.dispatch.Dispatcher.dispatch
      rooms.registry.Registry.settle                   the client's earlier chats delivered first
      handlers.join.handle
        rooms.registry.Registry.join                   a member at once, held (Hold) until placed
          engines.memory.MemoryEngine.announce         presence join into the room's stream
          rooms.registry.Registry.deliver              its own join gives it its place (Hold.at)
          engines.memory.MemoryEngine.read             history 41 < seq <= its place
          rooms.registry.Registry._joined              `joined`, then what was held since

  one nick change: {"type":"nick","nick":"ann"}
    handlers.nick.handle
      rooms.registry.Registry.set_nick                 reserved? banned from a room it is in?
        rooms.registry.Registry._rename                the nick changes hands (lock), reply
          rooms.cluster.ClusterRegistry._claim         (several processes: claimed in Redis first)
          rooms.registry.Registry._announce_quietly    a `nick` event in each of its rooms
            engines.redis.RedisEngine.announce         (Redis: one script, every process hears it)

  one edit: {"type":"edit","room":"lobby","seq":42,"text":"hi all"}
    handlers.edit.handle                               check room, seq and text
      rooms.registry.Registry.amend                    member? the room's rules, the chat as stored
        engines.sqlite.SqliteEngine.message            (engine.message: a reader connection)
        rooms.edits.check                              own chat? in the window? muted? -> the event
        engines.sqlite.SqliteEngine.amend              the room's next seq; queued behind the chats
    engines.sqlite.SqliteEngine._amend                 (writer thread) its row and its chat's, one commit
      rooms.registry.Registry.deliver                  then delivered as a chat is
"""

__version__ = "1.0.0"
