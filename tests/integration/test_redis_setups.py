"""Redis set-ups roomchat cannot use are refused at start with one line and exit status 2, never a
traceback: a Sentinel, a read-only replica, a wrong password (real redis-server processes); the
password of a Redis URL is never printed."""

import pytest
import redis

from tests.helpers import ServerProcess, on_free_port, run_to_exit
from tests.services import redis_on, require_program


@pytest.fixture
def start_redis(tmp_path):
    """start_redis(*args) -> the port of a redis-server started with `args` (a config file first,
    for a Sentinel) on a free port (another if it was taken); killed at teardown."""
    binary = require_program("redis-server", "apt-get install redis-server")
    procs = []

    def start(*args: str) -> int:
        options = [*args, "--save", "", "--dir", str(tmp_path)]
        port, proc = on_free_port(lambda port: (port, redis_on(binary, port, options)), "redis-server")
        procs.append(proc)
        return port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def refused(port: int) -> str:
    """roomchat's one line of stderr for `--redis` at `port`, having checked it exited 2."""
    done = run_to_exit("--redis", f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_a_sentinel_is_refused_with_one_line(start_redis, tmp_path):
    """A Redis Sentinel: one line saying how to find the primary, status 2."""
    primary = start_redis()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"sentinel monitor main 127.0.0.1 {primary} 1\n")
    assert "is a Redis Sentinel" in refused(start_redis(str(config), "--sentinel"))


def test_a_read_only_replica_is_refused_with_one_line(start_redis):
    """A replica: one line pointing at its primary, status 2."""
    primary = start_redis()
    assert "is a read-only replica" in refused(start_redis("--replicaof", "127.0.0.1", str(primary)))


def test_a_password_is_taken_from_the_url_and_never_printed(start_redis):
    """requirepass: without the password one line says how to give it; with it in the URL roomchat
    starts, and neither its output nor its log shows the password."""
    password = "pw-" + "s3cret" * 4
    port = start_redis()
    with redis.Redis(port=port, socket_connect_timeout=5) as client:
        client.config_set("requirepass", password)
    line = refused(port)
    assert "redis://:PASSWORD@HOST:PORT/DB" in line
    done = run_to_exit("--redis", f"redis://:wrong@127.0.0.1:{port}/0")
    assert done.returncode == 2 and "wrong" not in done.stderr and ":***@" in done.stderr
    server = ServerProcess("--redis", f"redis://:{password}@127.0.0.1:{port}/0", "--log-level", "DEBUG")
    try:
        banner = "\n".join(server.lines)
        assert password not in banner and f"history in Redis at redis://:***@127.0.0.1:{port}/0" in banner
    finally:
        server.stop()
    assert password not in server.stderr_text()
