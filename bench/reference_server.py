"""Reference server for the benchmark: the roomchat protocol subset on `websockets` asyncio.

It is the yardstick roomchat is compared against in the same run, on the same core, so it is
written the way a careful asyncio author would: each room event is encoded once with json.dumps
and handed to websockets.broadcast(), which writes the same bytes to every member without awaiting
slow ones. The sender's copy, which carries the request id, is broadcast to the sender alone, so it
can never be overtaken by a later event of the same room.

Subset: welcome on connect; join -> joined (members, history) plus presence to the others;
chat -> chat event to every member with a per-room seq. Nothing is validated beyond what the
benchmark needs, and there is no rate limit.
"""

import argparse
import asyncio
import collections
import itertools
import json
import signal
import time

from common import raise_nofile_limit
from websockets.asyncio.server import broadcast, serve

HISTORY = 50  # events kept per room for `joined`, as roomchat does


class Room:
    """Members, the last seq handed out and the tail of events for late joiners."""

    __slots__ = ("history", "members", "seq")

    def __init__(self):
        self.members = {}  # connection -> nick
        self.seq = 0
        self.history = collections.deque(maxlen=HISTORY)


class ChatServer:
    """All rooms of one process; touched only from the event loop, so no locks."""

    def __init__(self):
        self.rooms = collections.defaultdict(Room)
        self.numbers = itertools.count(1)

    async def handle(self, ws):
        nick = f"guest-{next(self.numbers)}"
        rooms = []
        await ws.send(json.dumps({"type": "welcome", "nick": nick}))
        try:
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "chat":
                    self.chat(ws, nick, msg)
                elif kind == "join":
                    name = msg["room"]
                    if name not in rooms:
                        rooms.append(name)
                        self.join(ws, nick, name)
        finally:
            for name in rooms:
                self.leave(ws, nick, name)

    def join(self, ws, nick, name):
        room = self.rooms[name]
        event = {"type": "presence", "room": name, "event": "join", "nick": nick}
        broadcast(room.members, json.dumps(event))
        room.members[ws] = nick
        reply = {
            "type": "joined",
            "room": name,
            "members": list(room.members.values()),
            "history": list(room.history),
        }
        broadcast((ws,), json.dumps(reply))

    def leave(self, ws, nick, name):
        room = self.rooms[name]
        room.members.pop(ws, None)
        event = {"type": "presence", "room": name, "event": "leave", "nick": nick}
        broadcast(room.members, json.dumps(event))

    def chat(self, ws, nick, msg):
        room = self.rooms.get(msg.get("room"))
        if room is None or ws not in room.members:
            broadcast((ws,), json.dumps({"type": "error", "code": "not_in_room", "id": msg.get("id")}))
            return
        room.seq += 1
        event = {
            "type": "chat",
            "room": msg["room"],
            "from": nick,
            "text": msg["text"],
            "seq": room.seq,
            "ts": time.time(),
        }
        room.history.append(event)
        broadcast((m for m in room.members if m is not ws), json.dumps(event))
        broadcast((ws,), json.dumps({**event, "id": msg.get("id")}))


async def main(host, port, max_size):
    raise_nofile_limit()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    chat = ChatServer()
    # compression=None: roomchat does not compress, and permessage-deflate would dominate the cost.
    # backlog: the scale scenario opens 200 connections at once.
    async with serve(chat.handle, host, port, compression=None, max_size=max_size, backlog=1024) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"reference server listening on ws://{host}:{bound}/", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-message-bytes", type=int, default=131072)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.max_message_bytes))
