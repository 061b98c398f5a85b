"""Fixtures: a real roomchat on port 0 in this process, WebSocket clients, and raw sockets."""

import base64
import contextlib
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import websocket

from chatserver.app import ChatServer
from chatserver.config import Config

ROOT = Path(__file__).resolve().parent.parent

threading.stack_size(512 * 1024)  # as roomchat.py does, so deep-input tests see production stacks


def make_config(**overrides) -> Config:
    """Test defaults: port 0, in-memory history, quiet logs; anything can be overridden."""
    values = {"port": 0, "db": ":memory:", "log_level": "WARNING"}
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def make_server():
    """Start ChatServer(s) with chosen settings; all are shut down at teardown."""
    servers = []

    def start(store=None, **overrides) -> ChatServer:
        server = ChatServer(make_config(**overrides), store=store).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown(timeout=0.5)


@pytest.fixture
def server(make_server) -> ChatServer:
    return make_server()


class Peer:
    """A websocket-client connection with JSON helpers; `welcome` is read on connect."""

    def __init__(self, url: str, timeout: float = 5):
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.welcome = self.recv()
        self.nick = self.welcome["nick"]

    def send(self, **msg) -> None:
        self.ws.send(json.dumps(msg))

    def recv(self) -> dict:
        return json.loads(self.ws.recv())

    def recv_type(self, kind: str, limit: int = 50) -> dict:
        """The next event of type `kind`, skipping others (presence, say)."""
        for _ in range(limit):
            event = self.recv()
            if event["type"] == kind:
                return event
        raise AssertionError(f"no {kind!r} event in {limit} messages")

    def request(self, **msg) -> dict:
        """Send and return the next event (the reply, when nothing else is in flight)."""
        self.send(**msg)
        return self.recv()

    def join(self, room: str, **extra) -> dict:
        self.send(type="join", room=room, **extra)
        return self.recv_type("joined")

    def set_nick(self, nick: str) -> None:
        reply = self.request(type="nick", nick=nick)
        assert reply["type"] == "nick", reply
        self.nick = nick

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def connect(server):
    """connect() -> Peer on the default server; connect(url) for another one."""
    peers = []

    def open_peer(url: str | None = None, **kwargs) -> Peer:
        peer = Peer(url or server.url, **kwargs)
        peers.append(peer)
        return peer

    yield open_peer
    for peer in peers:
        with contextlib.suppress(Exception):
            peer.close()


# -- raw sockets, for tests where the bytes matter ------------------------------------------------


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """A client frame with every field under the test's control (`length` may lie)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client on a plain socket: handshake, then frames in and out by hand."""

    def __init__(self, port: int, handshake: bool = True, timeout: float = 5, rcvbuf: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the advertised window stays small: a reader that stalls
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        if handshake:
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall(
                f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = self.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            self.welcome = self.read_json()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, **msg) -> None:
        self.sock.sendall(frame(0x1, json.dumps(msg).encode()))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def read_frame(self) -> tuple[int, bytes]:
        b1, b2 = self.read_exact(2)
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.read_exact(8))
        return b1 & 0x0F, self.read_exact(n)

    def read_json(self) -> dict:
        opcode, payload = self.read_frame()
        assert opcode == 0x1, (opcode, payload)
        return json.loads(payload)

    def read_close(self, reply: bool = True) -> int:
        """Read frames until a close frame; answer it as a client should; return its status code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                if reply:
                    with contextlib.suppress(OSError):
                        self.sock.sendall(frame(0x8, payload[:2]))
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def wait_eof(self, timeout: float = 3) -> bool:
        """True once the server has closed the TCP connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._fill()
            except EOFError:
                return True
            except (ConnectionResetError, TimeoutError):
                return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server):
    """raw() -> RawClient on the default server (handshake done); raw(handshake=False) for HTTP tests."""
    clients = []

    def open_raw(port: int | None = None, **kwargs) -> RawClient:
        client = RawClient(port or server.port, **kwargs)
        clients.append(client)
        return client

    yield open_raw
    for client in clients:
        client.close()


def wait_for(predicate, timeout: float = 3.0, interval: float = 0.01):
    """Poll until `predicate()` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
