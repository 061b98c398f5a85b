"""transport/: a connection's life from accept to close, on websocket-server 0.6.4 (the only
folder that imports it; its defects are fixed here, one override per fix).

server (the server, and a connection whole: its handshake, its read loop and what each frame
costs, its sends and close), state
(CONNECTING -> OPEN -> CLOSING -> CLOSED), streams (SocketReader, Outbox, Flusher), housekeeper
(live connections and their deadlines), caps (connection caps, the accept loop), tls (TLS on the
WebSocket port).

May import: wire, protocol, errors, ops.logs. The rest of the server sees a connection through a few
methods (`send_frame`, `backlog`, `pace`, `close`) and app.py's callbacks.
"""
