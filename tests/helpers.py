"""Test helpers shared by every test module: process and socket clients, frame builders,
fakes and waiting helpers. Fixtures live in conftest.py; test modules import only from here."""

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import websocket

from chatserver.app import ChatServer
from chatserver.config import Config
from chatserver.engine import LocalRules

ROOT = Path(__file__).resolve().parent.parent


ROOMCHAT = [sys.executable, str(ROOT / "roomchat.py")]


# Rate limits out of the way of a test's load: for make_server(), and as roomchat.py options.
FAST_LIMITS = {"rate_burst": 100_000, "rate_per_second": 100_000}


FAST = ["--rate-burst", "100000", "--rate-per-second", "100000", "--log-level", "WARNING"]


SECRET = "test-secret-" + "s" * 32  # a token secret for tests (RFC 7518 wants at least 32 bytes)


def token(nick: str, ttl: float = 3600, rooms=None, op: bool = False, secret: str = SECRET) -> str:
    """A token signed with `secret` (SECRET by default), as `python roomchat.py token` prints."""
    from chatserver.identity import issue

    return issue(secret.encode(), nick, ttl, rooms, op)


def with_token(url: str, signed: str) -> str:
    """The WebSocket URL with `?token=` (the way a client presents a token at the handshake)."""
    return f"{url}?token={signed}"


threading.stack_size(512 * 1024)  # as roomchat.py does, so deep-input tests see production stacks


def make_config(**overrides) -> Config:
    """Test defaults: port 0, in-memory history, quiet logs; anything can be overridden."""
    values = {"port": 0, "db": ":memory:", "log_level": "WARNING"}
    values.update(overrides)
    return Config(**values)


def restart(make_server, server: ChatServer, engine=None) -> ChatServer:
    """Stop `server` and start another on its port, with its (memory) engine unless `engine` is given."""
    port, kept = server.port, server.engine
    server.shutdown(timeout=0.5)
    return make_server(engine=engine or kept, port=port)


def closing_all(factory, close=lambda thing: thing.close()):
    """The body of a fixture that hands out `factory(...)` and closes all it made at teardown:
    `yield from closing_all(Peer)`."""
    made = []

    def make(*args, **kwargs):
        made.append(factory(*args, **kwargs))
        return made[-1]

    yield make
    for thing in made:
        with contextlib.suppress(Exception):
            close(thing)


class Peer:
    """A websocket-client connection with JSON helpers; `welcome` is read on connect."""

    def __init__(self, url: str, timeout: float = 5, **options):
        self.ws = websocket.create_connection(url, timeout=timeout, **options)  # sslopt=... for wss://
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

    def chat_all(self, room: str, texts: list[str]) -> list[dict]:
        """Send every text to `room` at once; return the chat events that come back, one per text
        (the acknowledgements, when nobody else talks there)."""
        for text in texts:
            self.send(type="chat", room=room, text=text)
        return [self.recv_type("chat") for _ in texts]

    def close_code(self) -> tuple[int, str]:
        """Read until the server's close frame (answering it); its code and reason."""
        while True:
            opcode, data = self.ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                payload = data.data
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def close(self) -> None:
        self.ws.close()


def server_with_chats(make_server, connect, texts: list[str], room: str = "lobby") -> ChatServer:
    """A new server (no rate limits in the way) whose `room` holds `texts` as seqs 1..n, all stored."""
    busy = make_server(**FAST_LIMITS)
    peer = connect(busy.url)
    peer.join(room)
    assert [e["seq"] for e in peer.chat_all(room, texts)] == list(range(1, len(texts) + 1))
    return busy


def roomchat_env(**variables: str) -> dict:
    """This process's environment without any ROOMCHAT_* setting, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    return {**env, **variables}


class ServerProcess:
    """`python roomchat.py --port 0 <FAST> ...` with its stdout read up to the ws:// URL.

    stderr (the log) goes to `log_path`, or to a temporary file; `stderr_text()` reads it.
    `defaults=()` leaves out `--port 0` and FAST, for tests of the settings themselves."""

    def __init__(self, *args: str, cwd=ROOT, env=None, log_path=None, defaults=("--port", "0", *FAST)):
        self._log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._stderr = ""
        self.proc = subprocess.Popen(
            [*ROOMCHAT, *defaults, *args],
            cwd=cwd, env=roomchat_env() if env is None else env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        self.lines = []
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                self.stop()
                raise AssertionError(f"roomchat exited before listening: {self.lines}, stderr {self._stderr!r}")
            self.lines.append(line.rstrip("\n"))
            if "listening on ws://" in line or "listening on wss://" in line:
                self.url = line.split("listening on ", 1)[1].strip()

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def stderr_text(self) -> str:
        """What the server has written to stderr so far; all of it once stopped."""
        if self._log.closed:
            return self._stderr
        fd = self._log.fileno()  # pread leaves the offset the server writes at alone
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signal the server and return its exit status; one that hangs is killed, then fails the test."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.proc.stdout.close()
            self._stderr = self.stderr_text()
            self._log.close()


def run_to_exit(*args: str, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    """`python roomchat.py --port 0 ...` run to its end (for start-up failures and --help)."""
    return subprocess.run(
        [*ROOMCHAT, "--port", "0", *args],
        cwd=cwd, env=roomchat_env() if env is None else env, capture_output=True, text=True, timeout=10,
    )


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
    """A WebSocket client on a plain socket: handshake, then frames in and out by hand.
    `sent_bytes` and `received_bytes` count every byte it wrote and read."""

    def __init__(self, port: int, handshake: bool = True, timeout: float = 5, rcvbuf: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the advertised window stays small: a reader that stalls
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.sent_bytes = self.received_bytes = 0
        if handshake:
            key = base64.b64encode(os.urandom(16)).decode()
            self.send(
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = self.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            self.welcome = self.read_json()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent_bytes += len(data)

    def send_json(self, **msg) -> None:
        self.send(frame(0x1, json.dumps(msg).encode()))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.received_bytes += len(chunk)
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
                        self.send(frame(0x8, payload[:2]))
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


def http_exchange(port: int, request: bytes) -> bytes:
    """Send `request` as is on a new connection to 127.0.0.1:`port`; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def upgrade_request(host: str, **headers: str) -> bytes:
    """A valid WebSocket opening request for Host `host`, plus `headers` (x_forwarded_for= -> X-Forwarded-For:)."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name.replace('_', '-').title()}: {value}\r\n" for name, value in headers.items())
    return (f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and a server certificate it signed; `spki` is the certificate's
    base64 SHA-256 SPKI hash, as Chromium's --ignore-certificate-errors-spki-list takes it."""

    ca: str
    cert: str
    key: str
    spki: str


def make_tls_files(directory: Path) -> TlsFiles:
    """A certificate authority made now (trustme) and a server certificate for 127.0.0.1,
    localhost and ::1, written to `directory`."""
    import trustme  # only the TLS tests need it
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    paths = TlsFiles(*(str(directory / name) for name in ("ca.pem", "cert.pem", "key.pem")), spki="")
    ca.cert_pem.write_to_path(paths.ca)
    Path(paths.cert).write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(paths.key)
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return TlsFiles(paths.ca, paths.cert, paths.key, base64.b64encode(hashlib.sha256(spki).digest()).decode())


def events_until(peer, last) -> list[dict]:
    """Every event `peer` receives up to and including the first for which `last(event)` holds."""
    events = [peer.recv()]
    while not last(events[-1]):
        events.append(peer.recv())
    return events


def wait_for(predicate, timeout: float = 3.0, interval: float = 0.01):
    """Poll until `predicate()` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class FakeConn:
    """A transport connection whose sends are kept in a list: for registry and dispatch tests.
    `closed` is the (code, reason) the server closed it with, or None."""

    def __init__(self):
        self.frames = []
        self.closed = None

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def events(self, kind=None) -> list:
        """Every event sent, in order; one write may carry several frames."""
        out = []
        for data in self.frames:
            pos = 0
            while pos < len(data):
                n = data[pos + 1] & 0x7F
                start = pos + 2
                if n == 126:
                    n, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
                elif n == 127:
                    n, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
                event = json.loads(data[start : start + n])
                pos = start + n
                if kind is None or event["type"] == kind:
                    out.append(event)
        return out


def require_program(name: str, install: str) -> str:
    """The path of system program `name` (PATH, then /usr/sbin and /sbin). Missing, the test is
    skipped with one line saying how to install it, or fails when CI is set: a CI that forgot to
    install it must not pass by skipping."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        reason = f"{name} is not installed here ({install})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    return path


class ManualEngine(LocalRules):
    """An engine that stores a chat only when the test says `commit()`, like the SQLite writer:
    reads see committed events only, and `announce` delivers at once. `on_read` runs inside
    every read, so a test can make things happen between a join's place and its history read.
    Room rules and reserved nicks are the memory engine's (LocalRules)."""

    cluster = False
    location = "test"
    epoch = "manual"

    def __init__(self):
        self.committed: dict[str, list] = {}
        self.uncommitted: list = []
        self.seqs: dict[str, int] = {}
        self.on_read = None
        self.reads = 0
        self.hub = None
        self._init_rules()

    def start(self, hub) -> None:
        self.hub = hub

    def last_seqs(self) -> dict:
        return {room: events[-1]["seq"] for room, events in self.committed.items() if events}

    def publish(self, room: str, chats: list) -> None:
        from chatserver.protocol import chat_event

        for sender, text, meta in chats:
            seq = self.seqs[room] = self.seqs.get(room, 0) + 1
            self.uncommitted.append((room, chat_event(room, sender, text, seq), meta))

    def commit(self, n: int | None = None) -> None:
        """Store the first `n` waiting events (all by default) and deliver them, in order."""
        n = len(self.uncommitted) if n is None else n
        batch, self.uncommitted = self.uncommitted[:n], self.uncommitted[n:]
        for room, event, _meta in batch:
            self.committed.setdefault(room, []).append(event)
        if batch:
            self.hub.deliver(batch)

    def announce(self, room: str, event: dict, meta) -> None:
        self.hub.deliver([(room, event, meta)])

    def read(self, room, before=None, after=None, limit=50) -> list:
        self.reads += 1
        if self.on_read is not None:
            hook, self.on_read = self.on_read, None
            hook()
        events = [e for e in self.committed.get(room, [])
                  if (after is None or e["seq"] > after) and (before is None or e["seq"] < before)]
        return events[:limit] if after is not None else events[-limit:]

    def health(self):
        return None

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server of the test's own on a free port, with an append-only file in
    `directory` (fsync always), so it can be stopped, killed and started again with its data."""

    def __init__(self, directory: Path):
        self.binary = require_program("redis-server", "apt-get install redis-server")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), timeout=10)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.RedisError:
        return False


class SilentProxy:
    """A TCP relay to 127.0.0.1:`upstream` that can go silent: `blackhole()` stops relaying in
    both directions but keeps every socket open, as a network that drops packets does (no FIN,
    no RST), so the server learns of nothing."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silent = threading.Event()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                if not self.silent.is_set():
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                return
            if not self.silent.is_set():
                with contextlib.suppress(OSError):
                    sink.sendall(data)

    def blackhole(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()
