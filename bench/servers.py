"""The servers the benchmark runs, each as a group of processes pinned to the server CPU.

A group is what one row of the table measures: one roomchat process (SQLite file or memory), the
reference server, or a cluster of roomchat processes on a redis-server that the group starts
itself. Every process of a group is pinned to the same CPU, so a cluster gets the one core a
single server gets, and the group's CPU time (user + sys, all threads, all processes) is
comparable with a single server's.
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
from common import find_port, free_port

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
    directory); `processes` > 1 puts that many roomchat processes on one redis-server."""

    name: str
    what: str
    store: tuple = ()
    processes: int = 1
    hiredis: bool = True  # False: redis-py's Python parser even where hiredis is installed
    reference: bool = False
    peer: str = ""  # "socketio", "flask-socketio" or "bun": a server users would pick instead (peers.py)
    path: str = "/"  # the WebSocket URL's path; /socket.io/... makes the generator speak Socket.IO
    skip: tuple = ()  # scenarios this server sits out

    @property
    def redis(self):
        return self.processes > 1

    @property
    def python(self):
        """Its (first) server process is CPython, so py-spy can profile it."""
        return self.peer in ("", "flask-socketio")

    def commands(self, directory, redis_url=None):
        """The command lines of the server processes (without the CPU pinning)."""
        if self.reference:
            return [[sys.executable, *REFERENCE]]
        if self.peer:
            return [PEER_COMMANDS[self.peer]()]
        python = [sys.executable] if self.hiredis else [sys.executable, "-c", WITHOUT_HIREDIS]
        store = ["--redis", redis_url] if self.redis else [a.format(dir=directory) for a in self.store]
        return [[*python, *ROOMCHAT, *store] for _ in range(self.processes)]


SERVERS = {
    s.name: s
    for s in (
        Server("roomchat", "roomchat --db FILE (SQLite, the default)", store=("--db", "{dir}/history.db")),
        Server("roomchat-memory", "roomchat --db :memory:", store=("--db", ":memory:")),
        Server("cluster", "2 x roomchat --redis URL on one redis-server", processes=2),
        Server("cluster-nohiredis", "the cluster with hiredis hidden: redis-py's Python parser",
               processes=2, hiredis=False),
        Server("reference", "websockets asyncio reference", reference=True),
        Server("socketio", "Socket.IO 4.8 on Node (rooms, to(room).emit), WebSocket transport only",
               peer="socketio", path=SOCKETIO_PATH),
        Server("flask-socketio", "Flask-SocketIO 5.7 in threading mode on Werkzeug (TCP_NODELAY set)",
               peer="flask-socketio", path=SOCKETIO_PATH, skip=("S6",)),  # 10,000 x 4 threads
        Server("bun", "Bun 1.4 built-in server (uWebSockets), a topic per room", peer="bun"),
    )
}
DEFAULT_SERVERS = ["roomchat", "roomchat-memory", "reference", "socketio", "flask-socketio", "bun"]


def available(server):
    """None when the server can run here, else a one-line reason (peers install on demand)."""
    try:
        if server.peer:
            PEER_COMMANDS[server.peer]()
    except peers.Unavailable as exc:
        return str(exc)
    if server.redis and redis_version() is None:
        return "redis-server is not installed (apt-get install redis-server)"
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


def redis_version():
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
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
        redis_url = self._start_redis(timeout) if self.server.redis else None
        for i, command in enumerate(self.server.commands(self.directory, redis_url)):
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

    def _start_redis(self, timeout):
        import redis  # the driver needs redis-py only for cluster rows

        binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", *REDIS_PERSISTENCE,
                   "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        proc = self._spawn("redis", command, self.directory / "redis.log")
        client = redis.Redis(port=port, socket_connect_timeout=0.5)

        def pings():
            try:
                return client.ping()
            except redis.RedisError:
                return False

        try:
            self._wait(pings, proc, self.directory / "redis.log", timeout)
        finally:
            client.close()
        return f"redis://127.0.0.1:{port}/0"

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
