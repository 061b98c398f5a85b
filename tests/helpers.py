"""Test helpers shared by every test module: process and socket clients, frame builders,
fakes and waiting helpers. Fixtures live in conftest.py; test modules import only from here."""

import base64
import contextlib
import gc
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import websocket

from chatserver.app import ChatServer
from chatserver.config import Config
from tests.fakes import (  # noqa: F401 - one place to import test helpers from
    FakeConn,
    ManualEngine,
    MeasuredSqlite,
    RecordingHub,
    RoomsHub,
    chat,
    seqs,
    started,
    write,
)
from tests.services import (  # noqa: F401
    PortTaken,
    RedisServer,
    TlsFiles,
    held_port,
    make_tls_files,
    on_free_port,
    require_program,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


ROOMCHAT = [sys.executable, str(ROOT / "roomchat.py")]
# A prefix that starts a program with Ctrl-C (SIGINT) at its default, as in a terminal: a suite
# started in the background of a shell without job control passes SIGINT on ignored, and Python
# started so never raises KeyboardInterrupt (GNU env, coreutils 8.31 or newer).
AS_IN_A_TERMINAL = ["env", "--default-signal=INT"]


# Rate limits out of the way of a test's load: for make_server(), and as roomchat.py options.
FAST_LIMITS = {"rate_burst": 100_000, "rate_per_second": 100_000}


FAST = ["--rate-burst", "100000", "--rate-per-second", "100000", "--log-level", "WARNING"]


EMOJI = tuple("👍👎😀😂🎉🚀👀🙏🔥✅❌🤔😢😮👏💯🍕🐍🌈☕🎈")  # 21 different emoji (one code point each)


SECRET = "test-secret-" + "s" * 32  # a token secret for tests (RFC 7518 wants at least 32 bytes)


def token(nick: str, ttl: float = 3600, rooms=None, op: bool = False, secret: str = SECRET) -> str:
    """A token signed with `secret` (SECRET by default), as `python roomchat.py token` prints."""
    from chatserver.rooms.identity import issue

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


@contextlib.contextmanager
def no_unclosed_resources():
    """Fails the test when the garbage collector finds something the block left unclosed
    (a ResourceWarning: from Python 3.13 on, a sqlite3.Connection dropped without close())."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaked = [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]
    assert not leaked, leaked


def closing_all(factory, close=lambda thing: thing.close(), first=None):
    """The body of a fixture that hands out `factory(...)` and closes all it made at teardown:
    `yield from closing_all(Peer)`. `first(thing)` runs on every one before the first close (to
    signal processes that then end side by side)."""
    made = []

    def make(*args, **kwargs):
        made.append(factory(*args, **kwargs))
        return made[-1]

    yield make
    for thing in made if first else ():
        with contextlib.suppress(Exception):
            first(thing)
    for thing in made:
        with contextlib.suppress(Exception):
            close(thing)


_ASKED = itertools.count(1)  # Peer.ask's request ids


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

    def ask(self, **msg) -> dict:
        """Send with an id (`id` if given, else one of its own) and return the answer carrying it
        (others' events before it skipped)."""
        msg_id = msg.setdefault("id", f"ask{next(_ASKED)}")
        self.send(**msg)
        while (event := self.recv()).get("id") != msg_id:
            pass
        return event

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
        self.ws.close()  # a no-op once the server closed it (websocket-client then keeps the socket)
        self.ws.shutdown()  # so the socket is closed here, not left to the garbage collector


def frames_until(peer: Peer, kind: str) -> list[dict]:
    """The frames `peer` gets up to and including the first of type `kind`."""
    frames = []
    while not frames or frames[-1]["type"] != kind:
        frames.append(peer.recv())
    return frames


def server_with_chats(make_server, connect, texts: list[str], room: str = "lobby", **overrides) -> ChatServer:
    """A new server (no rate limits in the way, and `overrides`) whose `room` holds `texts` as seqs 1..n, all stored."""
    busy = make_server(**{**FAST_LIMITS, **overrides})
    peer = connect(busy.url)
    peer.join(room)
    assert [e["seq"] for e in peer.chat_all(room, texts)] == list(range(1, len(texts) + 1))
    return busy


def as_run_here(command: str) -> str:
    """A documented command with the docs' `.venv/bin/python` (the venv `make run` makes) as the
    venv running these tests, which is another one under `make test PYTHON=python3.13`
    (.venv-3.13); the same command otherwise."""
    return command.replace(".venv/bin/python", f"{sys.prefix}/bin/python")


def roomchat_env(**variables: str) -> dict:
    """This process's environment without any ROOMCHAT_* setting, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCHAT_")}
    return {**env, **variables}


def ann_watched(peers, watcher_url: str, ann_url: str, room: str = "lobby") -> tuple:
    """A watcher in `room`, then `ann` joining it and the watcher reading her join: (watcher, ann)."""
    watcher = peers(watcher_url)
    watcher.join(room)
    ann = peers(ann_url)
    ann.set_nick("ann")
    ann.join(room)
    watcher.recv_type("presence")
    return watcher, ann


def curl_server(tmp_path, db: str) -> tuple:
    """`python roomchat.py` with a token secret, for a docs block of `roomchat.py token` and curl
    lines run with bash: (the ServerProcess, the environment the block runs in). Needs curl."""
    require_program("curl", "apt-get install curl")
    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    env = roomchat_env(ROOMCHAT_TOKEN_SECRET_FILE=str(secret))
    return ServerProcess("--db", str(tmp_path / db), env=env), env


class ServerProcess:
    """`python roomchat.py --port 0 <FAST> ...` with its stdout read up to the ws:// URL.

    stderr (the log) goes to `log_path`, or to a temporary file; `stderr_text()` reads it.
    `defaults=()` leaves out `--port 0` and FAST, for tests of the settings themselves;
    `preexec_fn` runs in the child before roomchat starts (to lower a resource limit, say);
    `program` replaces `python roomchat.py` (another interpreter and checkout, as argv)."""

    def __init__(self, *args: str, cwd=ROOT, env=None, log_path=None, defaults=("--port", "0", *FAST),
                 preexec_fn=None, program=None):
        self._log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._stderr = ""
        self.proc = subprocess.Popen(
            [*(program or ROOMCHAT), *defaults, *args],
            cwd=cwd, env=roomchat_env() if env is None else env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True, preexec_fn=preexec_fn,
        )
        self.lines = []
        self.url = None
        self.signalled = False  # by send_signal
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

    def send_signal(self, sig=signal.SIGTERM) -> None:
        """Send `sig` to the server if it is still running; stop() then sends none, only waits."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.signalled = True

    def stop(self, sig=signal.SIGTERM) -> int:
        """Signal the server (unless send_signal did) and return its exit status; one that hangs is
        killed, then fails the test."""
        if not self.signalled:
            self.send_signal(sig)
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
        cwd=cwd, env=roomchat_env() if env is None else env, capture_output=True, text=True, timeout=30,
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

    def __init__(self, port: int, handshake: bool = True, timeout: float = 5, rcvbuf: int = 0, source: str = ""):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:  # before connect, so the advertised window stays small: a reader that stalls
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:  # another loopback address (127.0.0.N) as the client's: the server sees another peer
            self.sock.bind((source, 0))
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


def read_head(sock: socket.socket) -> bytes:
    """What `sock` receives up to and including the blank line after an HTTP head (less at EOF)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def upgrade_request(host: str, **headers: str) -> bytes:
    """A valid WebSocket opening request for Host `host`, plus `headers` (x_forwarded_for= -> X-Forwarded-For:)."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name.replace('_', '-').title()}: {value}\r\n" for name, value in headers.items())
    return (f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def upgrade(raw_clients, port: int, target: str) -> tuple[int, dict, bytes]:
    """Send a WebSocket upgrade for `target`; the answer's status, headers (lower-case) and body."""
    client = raw_clients(port, handshake=False)
    key = base64.b64encode(os.urandom(16)).decode()
    client.send(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = client.read_until(b"\r\n\r\n").decode()
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {name.lower(): value for name, value in headers.items()}
    body = client.read_exact(int(headers.get("content-length", 0)))
    return int(lines[0].split()[1]), headers, body


def members_in(urls: list, peers, nicks: list, room: str = "lobby") -> list:
    """One anonymous peer per (url, nick), all in `room` with every join seen: the peers."""
    people = []
    for url, nick in zip(urls, nicks, strict=True):
        peer = peers(url)
        if peer.nick != nick:
            peer.set_nick(nick)
        peer.join(room)
        for earlier in people:
            earlier.recv_type("presence")
        people.append(peer)
    return people


def seated(url: str, peers, room: str, *nicks: str, op: str = "op") -> list:
    """An operator (a token with `op`) and anonymous peers with `nicks`, all in `room` with every join
    seen, so nothing is left unread: [operator, *peers]."""
    operator = peers(with_token(url, token(op, op=True)))
    members = [peers(url) for _ in nicks]
    for member, nick in zip(members, nicks, strict=True):
        member.set_nick(nick)
    everyone = [operator, *members]
    for i, peer in enumerate(everyone):
        peer.join(room)
        for earlier in everyone[:i]:
            earlier.recv_type("presence")
    return everyone


def events_until(peer, last) -> list[dict]:
    """Every event `peer` receives up to and including the first for which `last(event)` holds."""
    events = [peer.recv()]
    while not last(events[-1]):
        events.append(peer.recv())
    return events


