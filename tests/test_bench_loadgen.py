"""The benchmark's C load generator (bench/loadgen.c) against a scripted server over a real
socket: it must count what it is built to count, in both framings it speaks."""

import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading

import pytest

from tests.helpers import require_program
from tests.test_bench_smoke import ROOT

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def build_loadgen():
    """The generator as run.py builds it (bench/.build/loadgen); skips without gcc."""
    require_program("gcc", "apt-get install gcc")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "bench"))
    command, what = run.build_loadgen()
    assert command is not None, what
    return command


def read_frame(conn):
    """One masked client frame's payload (short frames: the generator's join and Engine.IO acks)."""
    head = conn.recv(2, socket.MSG_WAITALL)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(conn.recv(2, socket.MSG_WAITALL), "big")
    mask = conn.recv(4, socket.MSG_WAITALL)
    data = conn.recv(length, socket.MSG_WAITALL) if length else b""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def frame(payload):
    """An unmasked server text frame."""
    size = len(payload)
    head = bytes((0x81, size)) if size < 126 else bytes((0x81, 126)) + size.to_bytes(2, "big")
    return head + payload


class ScriptedServer(threading.Thread):
    """Accepts one connection, answers the handshake, welcome and join (roomchat's framing or
    Socket.IO's), then sends `events` (JSON bytes), the last frame split across two writes."""

    def __init__(self, events, socketio=False):
        super().__init__(daemon=True)
        self.events, self.socketio = events, socketio
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = []  # what the generator sent, unmasked

    def wrap(self, obj):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return b'42["msg",' + data + b"]" if self.socketio else data

    def run(self):
        with self.listener:  # one connection only
            conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            if self.socketio:
                conn.sendall(frame(b'0{"sid":"x","pingInterval":25000,"pingTimeout":20000}'))
                self.seen.append(read_frame(conn))  # "40"
                conn.sendall(frame(b'40{"sid":"y"}') + frame(b"2"))  # a ping the generator must answer
                self.seen.append(read_frame(conn))  # "3"
            conn.sendall(frame(self.wrap({"type": "welcome", "nick": "guest-1"})))
            self.seen.append(read_frame(conn))  # the join
            blob = frame(self.wrap({"type": "joined", "room": "r0", "members": [], "history": []}))
            blob += b"".join(frame(self.wrap(e)) for e in self.events)
            conn.sendall(blob[:-5])
            conn.sendall(blob[-5:])
            try:
                while conn.recv(4096):  # until the generator closes
                    pass
            except OSError:
                pass


def chat(seq, room="r0", text="t=0000000000000000001;x"):
    return {"type": "chat", "room": room, "from": "guest-2", "text": text, "seq": seq, "ts": 1.5}


def run_loadgen(command, url):
    """One client in room r0 as a (silent) sender, no chats sent: the checks over what arrived."""
    args = ["--url", url, "--mode", "rate", "--rate", "0", "--rooms", "1", "--clients-per-room", "1",
            "--senders-per-room", "1", "--warmup", "0.1", "--duration", "0.3", "--connect-timeout", "10"]
    proc = subprocess.run([*command, *args], input="go\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["name"] == "connected" and lines[0]["held"] == 1, lines
    return lines[-1]


@pytest.mark.parametrize("socketio", [False, True], ids=["roomchat-framing", "socketio-framing"])
def test_c_loadgen_counts_gaps_reordering_and_foreign_rooms(socketio):
    """A skipped seq counts as missing, a late one as reordered, a chat naming another room as an
    error, a presence event not at all; with Socket.IO framing it opens with 40 and answers pings."""
    command = build_loadgen()
    events = [chat(1), {"type": "presence", "room": "r0", "event": "join", "nick": "guest-3"},
              chat(2), chat(4), chat(3), chat(9, room="r1"), chat(5, text="t=0000000000000000001;" + "x" * 40000)]
    server = ScriptedServer(events, socketio)
    server.start()
    path = "/socket.io/?EIO=4&transport=websocket" if socketio else "/"
    result = run_loadgen(command, f"ws://127.0.0.1:{server.port}{path}")
    server.join(10)
    assert (result["missing"], result["reordered"], result["errors"]) == (1, 1, 1), result
    assert result["total_deliveries"] == 5
    assert json.loads(server.seen[-1].removeprefix(b'42["msg",').removesuffix(b"]")) == {"type": "join", "room": "r0"}
    if socketio:
        assert server.seen[:2] == [b"40", b"3"]
