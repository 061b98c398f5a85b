"""Real services a test starts and stops itself: redis-server and TLS files from a test CA, the
check that a system program is installed, and waiting. A program that cannot take port 0 starts
on a free port with on_free_port (bench/common.py), and again on another when the one it got was
taken meanwhile: redis_on and port_check tell whether it got it. held_port keeps a port closed.
Imported through tests/helpers.py (the relay that can go silent is tests/client_helpers.py's Relay)."""

import base64
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import PortTaken, free_port, on_free_port  # one helper for the tests and the benchmark


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


class RedisServer:
    """A real redis-server of the test's own on a free port, with an append-only file in
    `directory` (fsync always), so it can be stopped, killed and started again with its data."""

    OPTIONS: tuple = ()  # more redis-server options (a subclass's)

    def __init__(self, directory: Path):
        self.binary = require_program("redis-server", "apt-get install redis-server")
        self.directory = directory
        self.proc = None
        on_free_port(self._start_on, "redis-server")

    def _start_on(self, port: int) -> None:
        self.port, self.url = port, f"redis://127.0.0.1:{port}/0"
        self.start()

    def start(self) -> None:
        """Start redis-server on `port` and wait until it answers. Raises PortTaken when another
        process has the port (see redis_on)."""
        self.proc = redis_on(self.binary, self.port, [
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory),
            "--daemonize", "no", "--loglevel", "warning", *self.OPTIONS])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def redis_on(binary: str, port: int, args: list) -> subprocess.Popen:
    """`redis-server ARGS --port PORT --bind 127.0.0.1` (a config file may come first in `args`),
    once it answers pings as itself. Raises PortTaken, having killed it, when it did not get the
    port: it exited, or another process (another test's Redis, on another xdist worker) answers
    there and would otherwise have been taken for this one."""
    import redis

    proc = subprocess.Popen([binary, *args, "--port", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        answered = _answering(proc, client)
    except BaseException:
        _kill(proc)
        raise
    finally:
        client.close()
    if answered != proc.pid:
        _kill(proc)
        raise PortTaken(f"port {port}: redis-server {proc.pid} did not get it "
                        f"({'another process answers there' if answered else 'it exited'})")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _answering(proc: subprocess.Popen, client) -> int | None:
    """Wait until the redis-server `proc` exits or `client` (on the port it was to listen on) gets
    an answer; the process id of the server that answers there, None if `proc` exited."""
    wait_for(lambda: proc.poll() is not None or _pings(client), timeout=10)
    return None if proc.poll() is not None else client.info("server")["process_id"]


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.RedisError:
        return False


def listener(pid: int, port: int) -> bool | None:
    """Whether process `pid` (or one of its children) is what listens on TCP `port`, read from
    Linux's /proc: True when every socket listening on that port (any address, IPv4 or IPv6) is an
    open file of theirs; False when one is another process's (it had the port first, or set
    SO_REUSEPORT as Caddy does and listens beside it); None while none listens there."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:  # tcp6: none without IPv6
            next(rows)  # the header
            for row in rows:  # sl local_address rem_address st ... inode
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    return sockets <= _open_files([pid]) or sockets <= _open_files(_family(pid))


def _open_files(pids) -> set:
    """What the file descriptors of `pids` point at ("socket:[INODE]" for a socket)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def _family(pid: int) -> list:
    """`pid` and its descendants (nginx's workers, Firefox's processes)."""
    children = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit():  # stat: "PID (COMM) STATE PPID ...", COMM may hold anything
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
    family, todo = [], [pid]
    while todo:
        family.append(todo.pop())
        todo += children.get(family[-1], [])
    return family


IN_USE = ("address already in use",)  # what nginx, Caddy and chromedriver write when their port is taken


def port_check(pid: int, port: int, name: str, output, taken_says=IN_USE) -> bool:
    """One look at a program `name` (process `pid`) started on `port`: True once it listens there.
    Raises PortTaken when another process listens there or when what it wrote (`output()`) says
    the port was taken (holds one of `taken_says`, compared in lower case)."""
    said = output()
    if any(words in said.lower() for words in taken_says):
        raise PortTaken(f"port {port}: {name} {pid} found it taken: {said.strip()[-300:]}")
    if (mine := listener(pid, port)) is False:
        raise PortTaken(f"port {port}: another process listens there, not {name} {pid}")
    return bool(mine)


def wait_listening(pid: int, port: int, name: str, output, exited, taken_says=IN_USE, timeout: float = 10) -> None:
    """Wait until the program `name` (process `pid`) listens on `port`. Raises PortTaken as
    port_check does; AssertionError with its output when it exits (`exited()` true) or is not
    listening within `timeout` seconds. The caller stops it either way."""
    deadline = time.monotonic() + timeout
    while not port_check(pid, port, name, output, taken_says):
        if exited():
            port_check(pid, port, name, output, taken_says)  # it may have said why as it exited
            raise AssertionError(f"{name} exited: {output()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not listening on port {port} after {timeout} s: {output()[-2000:]}")
        time.sleep(0.02)


@contextlib.contextmanager
def held_port(how: str = "bound"):
    """Yields a port this process holds while the block runs. "bound": bound, never listening, so
    a connection there is refused and no other process can bind it (a port meant to be closed);
    "listening": connections wait in its backlog, unanswered; "reuseport": listening with
    SO_REUSEPORT, which lets another program that sets it too (Caddy) listen beside it."""
    with socket.socket() as sock:
        if how == "reuseport":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        if how != "bound":
            sock.listen()
        yield sock.getsockname()[1]


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

def wait_for(predicate, timeout: float = 3.0, interval: float = 0.01):
    """Poll until `predicate()` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class RedisCluster:
    """A real 3-master Redis Cluster of the test's own: three `redis-server --cluster-enabled yes`
    on free ports in `directory`, joined by `redis-cli --cluster create`; `urls` names each node."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0):
        """`replicas` per master (their nodes fail over within about two seconds)."""
        binary = require_program("redis-server", "apt-get install redis-server")
        cli = require_program("redis-cli", "apt-get install redis-tools")
        import redis

        self.ports, self.procs = [], []
        try:
            for _ in range(masters * (1 + replicas)):  # each on a port of its own, another if it was taken
                port, proc = on_free_port(lambda port: (port, self._node(binary, directory, port)),
                                          "a Redis Cluster node", find=_cluster_port)
                self.ports.append(port)
                self.procs.append(proc)
        except BaseException:
            self.kill()
            raise
        self.urls = [f"redis://127.0.0.1:{port}/0" for port in self.ports]
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        clients = [redis.Redis(port=port, socket_connect_timeout=0.5) for port in self.ports]
        for client in clients:
            wait_for(lambda c=client: c.cluster("info")["cluster_state"] == "ok", timeout=20, interval=0.1)
            client.close()
        client = redis.Redis(port=self.ports[0])

        def shards() -> list:
            return client.execute_command("CLUSTER", "SLOTS")

        wait_for(lambda: all(len(entry) - 3 == replicas for entry in shards()), timeout=20, interval=0.1)
        masters_seen = sorted({int(entry[2][1]) for entry in shards()})
        client.close()
        self.urls = [f"redis://127.0.0.1:{port}/0" for port in masters_seen]  # the masters

    @staticmethod
    def _node(binary: str, directory: Path, port: int) -> subprocess.Popen:
        """A cluster node on `port` (its bus on port + 10000) with its files in a new folder of
        `directory`: a port may come again, never a used node's files. Raises PortTaken."""
        node = Path(tempfile.mkdtemp(prefix=f"node-{port}-", dir=directory))
        return redis_on(binary, port, [
            "--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf"),
            "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--dir", str(node),
            # A replica is listed in CLUSTER SLOTS once it is in sync and its replication offset is
            # above 0: its full sync starts at once (not after a 5 s wait for other replicas), and a
            # master with no writes raises the offset by pinging its replicas every second, not 10.
            "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1",
            "--daemonize", "no", "--loglevel", "warning"])

    def master_of(self, key: str) -> tuple[int, list]:
        """The port of the master that holds `key` now, and its replicas' ports."""
        import redis

        for port, proc in zip(self.ports, self.procs, strict=True):
            if proc.poll() is not None:
                continue
            client = redis.Redis(port=port)
            try:
                slot = client.cluster("keyslot", key)
                for start, end, master, *replicas in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return int(master[1]), [int(r[1]) for r in replicas]
            finally:
                client.close()
        raise AssertionError("no live node")

    def kill_node(self, port: int) -> None:
        """kill -9 the node on `port`."""
        proc = self.procs[self.ports.index(port)]
        proc.kill()
        proc.wait(10)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
