"""Real services a test starts and stops itself: redis-server and TLS files from a test CA, the
check that a system program is installed, and waiting. Imported through tests/helpers.py (the
relay that can go silent is tests/client_helpers.py's Relay)."""

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortTaken(Exception):
    """Another process has the port a redis-server was to listen on."""


class RedisServer:
    """A real redis-server of the test's own on a free port, with an append-only file in
    `directory` (fsync always), so it can be stopped, killed and started again with its data."""

    PORT_TRIES = 5  # free ports tried: one found free may be taken before redis-server binds it
    OPTIONS: tuple = ()  # more redis-server options (a subclass's)

    def __init__(self, directory: Path):
        self.binary = require_program("redis-server", "apt-get install redis-server")
        self.directory = directory
        self.proc = None
        for tries_left in reversed(range(self.PORT_TRIES)):
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            try:
                self.start()
                break
            except PortTaken:
                if not tries_left:
                    raise

    def start(self) -> None:
        """Start redis-server on `port` and wait until it answers. Raises PortTaken when it could
        not have the port: another process (another test's Redis, on another xdist worker) had
        it, and answering pings there, would otherwise have been taken for this one."""
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning",
             *self.OPTIONS],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            answered = _answering(self.proc, client)
        finally:
            client.close()
        if answered != self.proc.pid:
            self.kill()
            raise PortTaken(f"port {self.port}: redis-server {self.proc.pid} did not get it "
                            f"({'another process answers there' if answered else 'it exited'})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


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

        for tries_left in reversed(range(RedisServer.PORT_TRIES)):  # as RedisServer: ports taken meanwhile
            self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
            self.procs = []
            for port in self.ports:
                node = directory / f"node-{port}-{tries_left}"  # a port may come again: never a used node's files
                node.mkdir()
                self.procs.append(subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(node / "nodes.conf"), "--cluster-node-timeout", "2000",
                     "--save", "", "--appendonly", "no",
                     "--dir", str(node), "--daemonize", "no", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            clients = [redis.Redis(port=port, socket_connect_timeout=0.5) for port in self.ports]
            try:
                taken = [port for port, proc, client in zip(self.ports, self.procs, clients, strict=True)
                         if _answering(proc, client) != proc.pid]
            except BaseException:
                self.kill()
                raise
            if not taken:
                break
            self.kill()
            for client in clients:
                client.close()
            if not tries_left:
                raise PortTaken(f"ports {taken}: their cluster nodes did not get them")
        self.urls = [f"redis://127.0.0.1:{port}/0" for port in self.ports]
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
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
