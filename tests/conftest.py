"""Fixtures: a real roomchat on port 0 in this process or as `python roomchat.py`, WebSocket
clients, and raw sockets. The helpers they hand out live in tests/helpers.py."""

import os
import shutil
import sys
import tempfile

import pytest

from chatserver.app import ChatServer
from chatserver.rooms.dispatch import Dispatcher
from handlers import BATCH_HANDLERS, HANDLERS
from tests.client_helpers import Relay
from tests.helpers import (
    Peer,
    RawClient,
    RedisServer,
    ServerProcess,
    TlsFiles,
    closing_all,
    make_config,
    make_tls_files,
)

DISPATCHER = Dispatcher(HANDLERS, BATCH_HANDLERS)


def pytest_configure(config):
    """With PYTHONDONTWRITEBYTECODE set, each roomchat, client or tool process a test starts would
    compile every module it imports that has no cached bytecode, the project's own (0.3 s of its
    start here): the processes started after this (xdist's workers and theirs) write and read
    their bytecode in a folder of the run's own instead (PYTHONPYCACHEPREFIX, removed at the end),
    so each module is compiled once per run and the checkout still gets no __pycache__. Done in the
    process pytest was started as (not in an xdist worker), before any is started."""
    if not sys.flags.dont_write_bytecode or os.environ.get("PYTHONPYCACHEPREFIX") or hasattr(config, "workerinput"):
        return
    prefix = tempfile.mkdtemp(prefix="roomchat-pycache-")
    config.add_cleanup(lambda: shutil.rmtree(prefix, ignore_errors=True))
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    del os.environ["PYTHONDONTWRITEBYTECODE"]


@pytest.fixture
def make_server():
    """Start ChatServer(s) with chosen settings; all are shut down at teardown."""
    servers = []

    def start(engine=None, **overrides) -> ChatServer:
        server = ChatServer(make_config(**overrides), DISPATCHER, engine=engine).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown(timeout=0.5)


@pytest.fixture
def server(make_server) -> ChatServer:
    return make_server()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    """A test CA and a server certificate for 127.0.0.1/localhost/::1, made once per run."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(make_server, tls_files) -> ChatServer:
    """A server with --certfile/--keyfile: https:// and wss:// on its port."""
    return make_server(certfile=tls_files.cert, keyfile=tls_files.key)


@pytest.fixture
def peers(make_server):
    """peers(url, timeout=5) -> Peer on any server; all closed at teardown (before make_server's
    servers shut down, so none of them waits for a client's close)."""
    yield from closing_all(Peer)


@pytest.fixture
def connect(server, peers):
    """connect() -> Peer on the default server; connect(url) for another one."""
    return lambda url=None, **kwargs: peers(url or server.url, **kwargs)


@pytest.fixture
def relay(server):
    """A Relay (tests/client_helpers.py) in front of the default server, closed at teardown."""
    relay = Relay(server.port)
    yield relay
    relay.close()


@pytest.fixture
def spawn():
    """spawn(*args, **kwargs) -> ServerProcess; any still running is stopped at teardown, side by
    side: each is sent its SIGTERM before any is waited for."""
    yield from closing_all(ServerProcess, close=ServerProcess.stop, first=ServerProcess.send_signal)


@pytest.fixture
def raw_clients(make_server):
    """raw_clients(port, handshake=True, ...) -> RawClient on any server; all closed at teardown."""
    yield from closing_all(RawClient)


@pytest.fixture
def raw(server, raw_clients):
    """raw() -> RawClient on the default server (handshake done); raw(handshake=False) for HTTP tests."""
    return lambda port=None, **kwargs: raw_clients(port or server.port, **kwargs)


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own (skipped without one, failing under CI=true)."""
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def cluster(redis_server, spawn):
    """cluster(n, *args) -> n roomchat processes on this test's Redis, with `args` as options."""
    return lambda n=2, *args: [spawn("--redis", redis_server.url, *args) for _ in range(n)]


@pytest.fixture
def ports_taken_first(monkeypatch):
    """ports_taken_first(*ports): the next free ports handed out (bench/common.py's free_port, which
    on_free_port asks) are `ports`, as if other processes had taken them since; then free ones.
    `common=` the module to change instead: the bench's scripts import bench/common.py as `common`."""
    from bench import common as tests_common

    def hand_out(*ports: int, common=tests_common) -> None:
        queue, find = list(ports), common.free_port
        monkeypatch.setattr(common, "free_port", lambda: queue.pop(0) if queue else find())

    return hand_out
