"""The benchmark's protocol subset on Flask-SocketIO in threading mode (no eventlet, no gevent):
what a Python user who wants rooms without asyncio would pick. Rooms and emit(to=room), as the
Flask-SocketIO docs show them; every message is a "msg" event carrying roomchat's JSON object.

welcome on connect; join -> joined (members, last 50 events) and presence to the others; chat ->
the chat event with the room's next seq to the others (skip_sid) and the sender's copy with its id.
Served by Werkzeug's threaded server (what socketio.run uses in threading mode), with TCP_NODELAY
set on each connection (Werkzeug leaves it off; without it Nagle, not the server, would set the
pace). No validation beyond what the benchmark needs, no rate limit. Runs in bench/.peers/flask.
"""

import argparse
import collections
import itertools
import socket
import threading
import time

from flask import Flask, request
from flask_socketio import SocketIO, emit, join_room
from werkzeug.serving import WSGIRequestHandler, make_server

HISTORY = 50

app = Flask(__name__)
sio = SocketIO(app, async_mode="threading", max_http_buffer_size=1 << 20)
rooms = collections.defaultdict(lambda: {"seq": 0, "history": collections.deque(maxlen=HISTORY), "members": {}})
nicks = {}  # sid -> nick
numbers = itertools.count(1)
lock = threading.Lock()  # one thread per connection: the seq and the emit happen under it, in room order


@sio.on("connect")
def connect():
    nick = nicks[request.sid] = f"guest-{next(numbers)}"
    emit("msg", {"type": "welcome", "nick": nick})


@sio.on("msg")
def message(msg):
    sid, nick = request.sid, nicks[request.sid]
    name = msg.get("room")
    with lock:
        if msg.get("type") == "chat":
            room = rooms.get(name)
            if room is None or sid not in room["members"]:
                emit("msg", {"type": "error", "code": "not_in_room", "id": msg.get("id")})
                return
            room["seq"] += 1
            event = {"type": "chat", "room": name, "from": nick, "text": msg["text"], "seq": room["seq"],
                     "ts": time.time()}
            room["history"].append(event)
            emit("msg", event, to=name, skip_sid=sid)
            emit("msg", {**event, "id": msg.get("id")})
        elif msg.get("type") == "join":
            room = rooms[name]
            if sid in room["members"]:
                return
            emit("msg", {"type": "presence", "room": name, "event": "join", "nick": nick}, to=name)
            join_room(name)
            room["members"][sid] = nick
            emit("msg", {"type": "joined", "room": name, "members": list(room["members"].values()),
                         "history": list(room["history"])})


@sio.on("disconnect")
def disconnect(*_reason):
    sid = request.sid
    nick = nicks.pop(sid, None)
    with lock:
        for name, room in rooms.items():
            if room["members"].pop(sid, None) is not None:
                emit("msg", {"type": "presence", "room": name, "event": "leave", "nick": nick}, to=name)


class NoDelayHandler(WSGIRequestHandler):
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args, **kwargs):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = make_server(args.host, args.port, app, threaded=True, request_handler=NoDelayHandler)
    server.socket.listen(1024)
    port = server.socket.getsockname()[1]
    print(f"flask-socketio server listening on ws://{args.host}:{port}/socket.io/?EIO=4&transport=websocket",
          flush=True)
    server.serve_forever()
