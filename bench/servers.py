"""The servers the benchmark runs, each as a group of processes pinned to the server CPU.

A group is what one row of the table measures: one roomchat process (SQLite file or memory), the
reference server, or several roomchat processes on Redis that the group starts itself: one
redis-server, or a Redis Cluster of several masters (each roomchat process on its own node).
Every process of a group is pinned to the same CPU, so a cluster gets the one core a single
server gets, and the group's CPU time (user + sys, all threads, all processes) is comparable
with a single server's.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import peers
import psutil
from common import PortTaken, find_port, free_port, on_free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVER_CPU, LOADGEN_CPU = 0, 1
RATE_LIMITS = ["--rate-burst", "1000000", "--rate-per-second", "1000000"]
ROOMCHAT = [
    str(ROOT / "roomchat.py"), "--host", "127.0.0.1", "--port", "0",
    *RATE_LIMITS, "--max-text-chars", "40000", "--max-message-bytes", "131072",
    "--max-outbox-bytes", "8388608", "--log-level", "WARNING",
    "--max-connections-per-address", "0",  # every load generator connection comes from 127.0.0.1
]
REFERENCE = [str(BENCH / "reference_server.py"), "--host", "127.0.0.1", "--port", "0"]
# Redis as docs/cluster.md recommends it: AOF with one fsync a second, no RDB snapshots.
REDIS_PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
PEER_COMMANDS = {  # each installs its peer on first use, or raises peers.Unavailable
    "socketio": lambda: ["env", f"NODE_PATH={peers.ensure_node() / 'node_modules'}", "node",
                         str(peers.SOURCES / "socketio_server.js"), "127.0.0.1", "0"],
    "bun": lambda: [str(peers.bun_binary()), "run", str(peers.SOURCES / "bun_server.js"), "127.0.0.1", "0"],
    "flask-socketio": lambda: [str(peers.ensure_flask()), str(peers.SOURCES / "flask_socketio_server.py"),
                               "--host", "127.0.0.1", "--port", "0"],
}
# Runs roomchat.py with `import hiredis` failing, so redis-py uses its own Python parser.
WITHOUT_HIREDIS = (
    "import runpy, sys; sys.modules['hiredis'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclasses.dataclass(frozen=True)
class Server:
    """One row of the table. `store`: roomchat's history option ("{dir}" is the run's own
    directory); `processes` > 1 puts that many roomchat processes on Redis: one redis-server, or
    with `masters` > 0 a Redis Cluster of that many masters (no replicas), the i-th process on the
    (i mod masters)-th node."""

    name: str
    what: str
    store: tuple = ()
    processes: int = 1
    hiredis: bool = True  # False: redis-py's Python parser even where hiredis is installed
    reference: bool = False
    peer: str = ""  # "socketio", "flask-socketio" or "bun": a server users would pick instead (peers.py)
    path: str = "/"  # the WebSocket URL's path; /socket.io/... makes the generator speak Socket.IO
    skip: tuple = ()  # scenarios this server sits out
    masters: int = 0  # > 0: a Redis Cluster of this many masters instead of one redis-server

    @property
    def redis(self):
        return self.processes > 1

    @property
    def python(self):
        """Its (first) server process is CPython, so py-spy can profile it."""
        return self.peer in ("", "flask-socketio")

    def commands(self, directory, redis_urls=()):
        """The command lines of the server processes (without the CPU pinning); `redis_urls`: the
        redis-server's URL, or each cluster node's (process i gets node i mod their number)."""
        if self.reference:
            return [[sys.executable, *REFERENCE]]
        if self.peer:
            return [PEER_COMMANDS[self.peer]()]
        python = [sys.executable] if self.hiredis else [sys.executable, "-c", WITHOUT_HIREDIS]
        if not self.redis:
            return [[*python, *ROOMCHAT, *(a.format(dir=directory) for a in self.store)]]
        return [[*python, *ROOMCHAT, "--redis", redis_urls[i % len(redis_urls)]] for i in range(self.processes)]


SERVERS = {
    s.name: s
    for s in (
        Server("roomchat", "roomchat --db FILE (SQLite, the default)", store=("--db", "{dir}/history.db")),
        Server("roomchat-memory", "roomchat --db :memory:", store=("--db", ":memory:")),
        Server("cluster", "2 x roomchat --redis URL on one redis-server", processes=2),
        Server("cluster-nohiredis", "the cluster with hiredis hidden: redis-py's Python parser",
               processes=2, hiredis=False),
        Server("redis-cluster", "3 x roomchat --redis URL, each on its own master of a 3-master Redis Cluster",
               processes=3, masters=3),
        Server("reference", "websockets asyncio reference", reference=True),
        Server("socketio", "Socket.IO 4.8 on Node (rooms, to(room).emit), WebSocket transport only",
               peer="socketio", path=SOCKETIO_PATH),
        Server("flask-socketio", "Flask-SocketIO 5.7 in threading mode on Werkzeug (TCP_NODELAY set)",
               peer="flask-socketio", path=SOCKETIO_PATH, skip=("S6",)),  # 10,000 x 4 threads
        Server("bun", "Bun 1.4 built-in server (uWebSockets), a topic per room", peer="bun"),
    )
}
DEFAULT_SERVERS = ["roomchat", "roomchat-memory", "cluster", "redis-cluster", "reference", "socketio",
                   "flask-socketio", "bun"]


def available(server):
    """None when the server can run here, else a one-line reason (peers install on demand)."""
    try:
        if server.peer:
            PEER_COMMANDS[server.peer]()
    except peers.Unavailable as exc:
        return str(exc)
    if server.redis and redis_version() is None:
        return "redis-server is not installed (apt-get install redis-server)"
    if server.masters and redis_cli() is None:
        return "redis-cli is not installed (apt-get install redis-tools)"
    return None


def pinned(cpu):
    """Command prefix that pins a child to one CPU, or nothing on a one-CPU machine."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def redis_parser(hiredis=True):
    """Which RESP parser redis-py uses in a roomchat process: "hiredis X.Y.Z" or "Python"."""
    if not hiredis:
        return "Python"
    probe = "import redis.utils as u, sys; print(u.HIREDIS_AVAILABLE and __import__('hiredis').__version__ or '')"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    return f"hiredis {out}" if out else "Python"


def redis_binary():
    """The redis-server executable (PATH, then /usr/sbin and /sbin), or None."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")


def redis_cli():
    """The redis-cli executable, or None."""
    return shutil.which("redis-cli") or shutil.which("redis-cli", path="/usr/sbin:/sbin")


def redis_version():
    binary = redis_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), "?")


class Group:
    """The processes of one server for one run: start(), then cpu()/rss()/threads() samples, stop().

    `roles`: "server" for roomchat or the reference, "redis" for redis-server.
    Raises RuntimeError when a process does not come up.
    """

    def __init__(self, server, directory):
        self.server = server
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.procs = []  # (role, Popen, psutil.Process, log file)
        self.urls = []

    def start(self, timeout=15.0):
        redis_urls = ()
        if self.server.masters:
            redis_urls = self._start_redis_cluster(self.server.masters, timeout)
        elif self.server.redis:
            redis_urls = [f"redis://127.0.0.1:{self._start_redis(timeout)}/0"]
        for i, command in enumerate(self.server.commands(self.directory, redis_urls)):
            logfile = self.directory / f"server-{i}.log"
            proc = self._spawn("server", command, logfile)
            port = self._wait(lambda logfile=logfile: find_port(logfile.read_bytes()), proc, logfile, timeout)
            self.urls.append(f"ws://127.0.0.1:{port}{self.server.path}")
        return self.urls

    def _spawn(self, role, command, logfile):
        with open(logfile, "wb") as out:
            proc = subprocess.Popen([*pinned(SERVER_CPU), *command], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=ROOT)
        self.procs.append((role, proc, psutil.Process(proc.pid), logfile))
        return proc

    def _wait(self, ready, proc, logfile, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.server.name}: a process did not come up; log tail: {tail(logfile)}")

    def _start_redis(self, timeout, cluster=None):
        """One redis-server on a free port (another if it was taken); with `cluster` (a directory)
        a Redis Cluster node keeping its nodes.conf there. Returns its port."""
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        return on_free_port(lambda port: self._redis_on(binary, port, timeout, cluster), "redis-server")

    def _redis_on(self, binary, port, timeout, cluster):
        """redis-server on `port`, once it answers as itself. Raises PortTaken, having stopped it,
        when it did not get the port (or its cluster bus port): it exited saying the address is in
        use, or another process (another bench's or test's Redis) answers there."""
        home = cluster or self.directory
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", *REDIS_PERSISTENCE,
                   "--dir", str(home), "--daemonize", "no", "--loglevel", "warning"]
        if cluster:  # the cluster bus on a free port of its own (Redis 7), not port + 10000
            bus = next(p for p in iter(free_port, None) if p != port)
            (home / "nodes.conf").unlink(missing_ok=True)  # a node that lost its port may have written one
            command += ["--cluster-enabled", "yes", "--cluster-port", str(bus),
                        "--cluster-config-file", str(home / "nodes.conf")]
        proc = self._spawn("redis", command, home / "redis.log")
        try:
            answered = self._wait(lambda: redis_ask(port, lambda c: c.info("server")["process_id"]), proc,
                                  home / "redis.log", timeout)
        except RuntimeError:  # it exited
            if "in use" not in tail(home / "redis.log"):
                raise
            answered = None
        if answered != proc.pid:
            stop(proc)
            self.procs.pop()
            raise PortTaken(f"port {port}: redis-server {proc.pid} did not get it "
                            f"({'another process answers there' if answered else tail(home / 'redis.log', 200)})")
        return port

    def _start_redis_cluster(self, masters, timeout):
        """`masters` cluster nodes joined by `redis-cli --cluster create` (no replicas), as
        tests/services.py's RedisCluster does; returns the nodes' URLs once each serves all slots."""
        cli = redis_cli()
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        ports = []
        for i in range(masters):
            home = self.directory / f"redis-node-{i}"
            home.mkdir(exist_ok=True)
            ports.append(self._start_redis(timeout, cluster=home))
        done = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                               "--cluster-replicas", "0", "--cluster-yes"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-300:]}")
        for port, (_role, proc, _ps, log) in zip(ports, self.procs[-masters:], strict=True):
            # every node sees every slot served before roomchat asks any of them
            self._wait(lambda port=port: redis_ask(port, cluster_settled), proc, log, timeout)
        return [f"redis://127.0.0.1:{port}/0" for port in ports]

    def cpu(self):
        """CPU seconds (user + sys, all threads) per role, summed over the role's processes, and
        under "sys" the kernel's part of all of them."""
        out = {"sys": 0.0}
        for role, _proc, ps, _log in self.procs:
            times = ps.cpu_times()
            out[role] = out.get(role, 0.0) + times.user + times.system
            out["sys"] += times.system
        return out

    def pid(self):
        """The first server process's pid (py-spy attaches to it)."""
        return next(ps.pid for role, _proc, ps, _log in self.procs if role == "server")

    def rss(self):
        return sum(ps.memory_info().rss for _role, _proc, ps, _log in self.procs)

    def count(self, role):
        """How many of the group's processes have `role` ("server" or "redis")."""
        return sum(r == role for r, _proc, _ps, _log in self.procs)

    def threads(self):
        return sum(ps.num_threads() for role, _proc, ps, _log in self.procs if role == "server")

    def exited(self):
        """A line for each process that has died, or None."""
        dead = [f"{role} exited with code {proc.returncode}: {tail(log, 300)}"
                for role, proc, _ps, log in self.procs if proc.poll() is not None]
        return "; ".join(dead) or None

    def log_tail(self):
        return " | ".join(tail(log) for role, _proc, _ps, log in self.procs if role == "server")

    def stop(self):
        """Servers first (roomchat releases its nicks in Redis as it goes), then redis-server."""
        for wanted in ("server", "redis"):
            for role, proc, _ps, _log in self.procs:
                if role == wanted:
                    stop(proc)


def cluster_settled(client):
    """True when the cluster node behind `client` sees every slot served (cluster_state ok)."""
    return client.cluster("info")["cluster_state"] == "ok"


def redis_ask(port, question):
    """question(client) for the redis-server on `port`; None when it does not answer."""
    import redis  # the driver needs redis-py only for Redis rows

    client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=5)
    try:
        return question(client)
    except redis.RedisError:
        return None
    finally:
        client.close()


def stop(proc, patience=0.0, grace=5.0):
    """Let a child finish for `patience` seconds, then SIGTERM it, then SIGKILL it after `grace`."""
    try:
        proc.wait(patience)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path, chars=600):
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""
