"""The fault suite's harness: a redis-server that can be paused, put to sleep, killed and restarted
from an append-only file whose tail was cut, or a Redis Cluster whose nodes can be paused; roomchat
processes that can be paused, stopped and killed; a TCP proxy that can blackhole, heal or cut one
process's link to Redis; and the Rig that holds them with the recording clients
(tests/faults/recorder.py) and what they all saw.

Threads: each Proxy runs an accept thread and two pump threads per connection; the Rig runs one
nick monitor thread; each Recorder its reader. `Rig._lock` guards the Rig's records (chats,
acknowledgements, refusals, nick observations) and is taken after a Recorder's lock, never before.
"""

import contextlib
import signal
import socket
import threading
import time
from pathlib import Path

from chatserver.protocol import fold_nick
from tests.faults.recorder import Recorder
from tests.helpers import SECRET, ServerProcess, token
from tests.services import RedisCluster, RedisServer, require_program

# The liveness lease each roomchat process holds in Redis, in seconds (`--redis-lease`). Short,
# so that the suite is quick (every fault's length is a multiple of it), yet long enough that a
# process starved of CPU on a busy machine (lease + grace: 4 s) is not taken for a paused one.
LEASE = 2.0
LEASE_ARGS = ("--redis-lease", f"{LEASE:g}")
# Seconds after a fault ends within which every process's `who` must equal the truth (polled).
CONVERGE = 4 * LEASE + 10
# One holder per nick: two running clients with one nick (folded) in every observation for this
# long are two holders. Shorter, it is the moment a rename or a 1012 close is on its way to one of
# them while the other's reply already arrived, or a process just continued (SIGCONT) learning
# at its next beat (a fraction of the lease) that it lost a claim. While a process is stopped its
# clients do not count: it can neither send nor deliver anything under their nicks.
DOUBLE_SETTLE = 2 * LEASE
NICK_POLL = 0.05  # seconds between observations of every client's nick


class FaultyRedis(RedisServer):
    """A redis-server (append-only file in `directory`) that the test can pause (SIGSTOP), put to
    sleep (DEBUG SLEEP), kill -9 and start again from an append-only file whose tail it cut."""

    OPTIONS = ("--aof-load-truncated", "yes", "--enable-debug-command", "local")

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=30)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def sleep(self, seconds: float) -> threading.Thread:
        """DEBUG SLEEP `seconds` from a thread of its own (Redis answers nobody meanwhile); the
        thread ends when Redis wakes up. Returns once the command has been sent."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=seconds + 30)
        sock.sendall(f"DEBUG SLEEP {seconds:g}\r\n".encode())

        def wait():
            with sock:
                sock.recv(64)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread

    def incr_file(self) -> Path:
        """The append-only file Redis 7 appends to now (multi-part AOF: appendonlydir/*.incr.aof)."""
        manifest = (self.directory / "appendonlydir" / "appendonly.aof.manifest").read_text()
        name = [line.split()[1] for line in manifest.splitlines() if line.split()[-1] == "i"][-1]
        return self.directory / "appendonlydir" / name

    def aof_size(self) -> int:
        return self.incr_file().stat().st_size

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        super().kill()

    def crash_and_lose_tail(self, keep: int) -> int:
        """kill -9, cut the incremental append-only file to `keep` bytes plus half a command (so
        the writes after `keep` are lost and the file ends mid-command, as after a crash with
        appendfsync everysec), and start again (aof-load-truncated). Returns the bytes cut."""
        self.kill()
        path = self.incr_file()
        size = path.stat().st_size
        cut_to = min(size, keep + 7)  # "*3\r\n$3\r" and so on: a torn command
        with open(path, "r+b") as file:
            file.truncate(cut_to)
        self.start()
        return size - cut_to


class FaultyCluster(RedisCluster):
    """A Redis Cluster (tests/services.py) of 3 masters with a replica each, whose nodes the test
    can pause (SIGSTOP) and continue; `masters` are the ports of its masters at the start, `url`
    and `port` name the first (any node serves as a roomchat process's seed)."""

    def __init__(self, directory: Path):
        super().__init__(directory, replicas=1)
        self.masters = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in self.urls]
        self.port, self.url = self.masters[0], self.urls[0]

    def pause(self, port: int) -> None:
        self.procs[self.ports.index(port)].send_signal(signal.SIGSTOP)

    def resume(self, port: int | None = None) -> None:
        """SIGCONT the node on `port` (every node when None)."""
        for proc in (self.procs if port is None else [self.procs[self.ports.index(port)]]):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def role(self, port: int) -> str:
        """"master" or "slave", as the node on `port` says (ROLE)."""
        import redis

        client = redis.Redis(port=port, socket_timeout=5)
        try:
            return client.execute_command("ROLE")[0].decode()
        finally:
            client.close()

    def kill(self) -> None:
        self.resume()
        super().kill()


class Proxy:
    """A TCP proxy on 127.0.0.1 (`url`) in front of Redis for one roomchat process.

    blackhole(): stop forwarding both ways and keep every socket open (no FIN, no RST): bytes
    wait, in the kernel or here; new connections are accepted and then wait too.
    hold_replies_after(marker): once a command holding `marker` has gone to Redis, hold what Redis
    sends (its reply, and messages of the subscription) the same way; `held` is set then.
    heal(): forward again, what waited first. cut(): close both sides of every connection now."""

    def __init__(self, port: int):
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._flowing = threading.Event()  # towards Redis (and for new connections)
        self._flowing.set()
        self._replying = threading.Event()  # from Redis
        self._replying.set()
        self._marker = None
        self.held = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # guards _pairs
        self._pairs: list = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def blackhole(self) -> None:
        self._flowing.clear()
        self._replying.clear()

    def hold_replies_after(self, marker: bytes) -> None:
        self.held.clear()
        self._marker = marker

    def heal(self) -> None:
        self._flowing.set()
        self._replying.set()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _drop(sock)

    def close(self) -> None:
        self._closed = True
        self.heal()
        _drop(self._listener)
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        self._flowing.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
            upstream.settimeout(None)
        except OSError:
            _drop(client)
            return
        with self._lock:
            self._pairs.append((client, upstream))
        for source, target, gate in ((client, upstream, self._flowing), (upstream, client, self._replying)):
            threading.Thread(target=self._pump, args=(source, target, gate), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, gate: threading.Event) -> None:
        try:
            while True:
                gate.wait()
                data = source.recv(65536)
                if not data:
                    break
                gate.wait()  # what arrived while blackholed waits here
                if self._marker is not None and gate is self._flowing and self._marker in data:
                    self._marker = None
                    self._replying.clear()
                    self.held.set()
                target.sendall(data)
        except OSError:
            pass
        _drop(source)
        _drop(target)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Node:
    """One roomchat process (tests/helpers.py ServerProcess) named `name`, on Redis at `redis_url`
    (a Proxy's, for a process whose link the test breaks)."""

    def __init__(self, name: str, redis_url: str, proxy: Proxy | None, log_path: Path, *args: str):
        self.name = name
        self.proxy = proxy
        try:
            self.server = ServerProcess("--redis", redis_url, *LEASE_ARGS, "--token-secret", SECRET, *args,
                                        log_path=log_path)
        except AssertionError as exc:
            refused = [line for line in str(exc).split("\\n") if "unrecognized arguments" in line]
            if refused:  # the one line that matters, not the whole usage text
                raise AssertionError(f"process {name} did not start: {refused[0]}") from None
            raise
        self.url = self.server.url
        self.stopped = False  # SIGSTOPped now
        self.ended = False  # killed or terminated

    def __repr__(self):
        return f"process {self.name}"

    def pause(self) -> None:
        self.stopped = True
        self.server.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.server.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        self.ended = True
        self.server.proc.kill()
        self.server.proc.wait()

    def terminate(self) -> int:
        self.ended = True
        return self.server.stop()

    def log(self) -> str:
        return self.server.stderr_text()

    def shutdown(self) -> None:
        if self.server.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.server.proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(Exception):
            self.server.stop()


class Rig:
    """A test's redis-server, roomchat processes, proxies and recording clients, and what the
    clients saw, cluster-wide: every chat by (epoch, room, seq), the acknowledged chats, and any
    moment two running clients held one nick. Checks: tests/faults/invariants.py."""

    def __init__(self, directory: Path, cluster: bool = False):
        """`cluster`: a FaultyCluster rather than one FaultyRedis (`redis` either way)."""
        require_program("redis-server", "apt-get install redis-server")
        self.directory = directory
        self.redis = FaultyCluster(directory) if cluster else FaultyRedis(directory)
        self.nodes: list[Node] = []
        self.proxies: list[Proxy] = []
        self.clients: list[Recorder] = []
        self._observers: dict = {}
        self._lock = threading.Lock()
        self.chats: dict = {}  # (epoch, room, seq) -> (from, text, who saw it first)
        self.acked: list = []  # (epoch, room, seq, from, text, time the chat was sent, sender)
        self.violations: list = []  # found as it happened: a seq given to two chats in one epoch
        self.doubles: dict = {}  # folded nick held twice -> (first seen, last seen, {holders})
        self._streaks: dict = {}  # folded nick held twice in every observation -> (since, {holders})
        self._watching = True
        self._monitor = threading.Thread(target=self._watch_nicks, name="nick-monitor", daemon=True)
        self._monitor.start()

    # -- building ------------------------------------------------------------------------------

    def node(self, name: str, proxied: bool = False, *args: str, url: str | None = None) -> Node:
        """Start roomchat process `name`; `proxied`: its Redis link goes through a Proxy (node.proxy);
        `url`: its Redis (a node of the cluster) when not the Rig's first."""
        proxy = Proxy(self.redis.port) if proxied else None
        if proxy:
            self.proxies.append(proxy)
        node = Node(name, proxy.url if proxy else url or self.redis.url, proxy, self.directory / f"{name}.log", *args)
        self.nodes.append(node)
        return node

    def client(self, node: Node, label: str, nick: str | None = None, rooms=(), token_for: str | None = None,
               op: bool = False) -> Recorder:
        """A Recorder on `node`; with `token_for`, presenting a token for that nick (`op`: an
        operator's); with `nick`, that nick taken (the test fails if refused); `rooms` joined."""
        signed = token(token_for, op=op) if token_for else None
        client = Recorder(self, node, label, signed)
        self.clients.append(client)
        if nick:
            reply = client.set_nick(nick)
            assert reply.get("type") == "nick", f"{client}: setting up, nick {nick} refused: {reply}"
        for room in rooms:
            reply = client.join(room)
            assert reply.get("type") == "joined", f"{client}: setting up, join {room} refused: {reply}"
        return client

    def observer(self, node: Node) -> Recorder:
        """A client of `node` in no room, that asks `who` and `rooms` there."""
        if node.name not in self._observers or self._observers[node.name].gone:
            self._observers[node.name] = self.client(node, f"obs{node.name}")
        return self._observers[node.name]

    def running(self) -> list[Node]:
        return [n for n in self.nodes if not n.ended]

    def members(self, room: str) -> list[str]:
        """The truth: the nicks of the connected clients that are in `room` (as they were told), sorted."""
        return sorted(c.nick for c in self.clients if c.connected and not c.node.ended and c.in_room(room))

    # -- records (from Recorder threads) -------------------------------------------------------

    def record_chat(self, epoch: str, chat: dict, seen_by) -> None:
        key, content = (epoch, chat["room"], chat["seq"]), (chat["from"], chat["text"])
        with self._lock:
            first = self.chats.setdefault(key, (*content, seen_by.label))
            if first[:2] != content and not any(f"seq {chat['seq']} was {first[:2]}" in v for v in self.violations):
                self.violations.append(
                    f"seq reused: epoch {epoch} room {chat['room']} seq {chat['seq']} was {first[:2]} "
                    f"(seen by {first[2]}) and is {content} (seen by {seen_by.label})")

    def record_ack(self, epoch: str, chat: dict, sender, sent_at: float) -> None:
        with self._lock:
            self.acked.append((epoch, chat["room"], chat["seq"], chat["from"], chat["text"], sent_at, sender.label))

    # -- one holder per nick, observed all along -----------------------------------------------

    def _watch_nicks(self) -> None:
        while self._watching:
            self.observe_nicks()
            time.sleep(NICK_POLL)

    def observe_nicks(self) -> None:
        """One observation: the running clients' nicks, folded, must be distinct; a nick held
        twice in every observation for DOUBLE_SETTLE seconds goes into `doubles`."""
        now = time.monotonic()
        holders: dict = {}
        for client in list(self.clients):
            node = client.node
            if client.connected and client.nick and not node.ended and not node.stopped:
                holders.setdefault(fold_nick(client.nick), set()).add(f"{client.label} on {node.name}")
        with self._lock:
            streaks = {}
            for nick, who in holders.items():
                if len(who) > 1:
                    since, before = self._streaks.get(nick, (now, set()))
                    streaks[nick] = (since, before | who)
            self._streaks = streaks
            for nick, (since, who) in self._streaks.items():
                if now - since >= DOUBLE_SETTLE:
                    first, _last, seen = self.doubles.get(nick, (since, now, set()))
                    self.doubles[nick] = (first, now, seen | who)

    def close(self) -> None:
        """Teardown: clients, processes (continued first if stopped), proxies, Redis; each
        process's log tail is printed (pytest shows it with a failure)."""
        self._watching = False
        self._monitor.join(2)
        for node in self.nodes:  # a stopped process would keep each client's close waiting
            if node.stopped:
                node.resume()
        self.redis.resume()
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        for node in self.nodes:
            node.shutdown()
            tail = node.log().splitlines()[-40:]
            print(f"--- {node.name} log (last {len(tail)} lines) ---", *tail, sep="\n")
        for proxy in self.proxies:
            proxy.close()
        self.redis.kill()

