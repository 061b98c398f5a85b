"""`python roomchat.py selftest URL`: passes against roomchat, and names the check that fails
against a server broken on purpose (roomchat behind a relay that alters what clients receive)."""

import contextlib
import io
import json
import subprocess
import threading
from unittest import mock

import pytest
import websocket
from websockets.sync.server import serve

from chatclient import selftest_client
from chatclient.selftest import main, run
from chatclient.selftest_checks import CHECKS
from tests.helpers import ROOMCHAT, ROOT, SECRET, held_port, roomchat_env, token
from tests.proxies import proxy_line_settings


class BrokenServer:
    """A WebSocket relay in front of a real server: each connection gets its own upstream
    connection, and every event on its way to the client goes through `mutate(event)`, which
    returns the events to send instead (none, itself, or others). One `mutate` per connection,
    made by `make_mutate()`, so it may keep state."""

    def __init__(self, upstream: str, make_mutate):
        self.upstream, self.make_mutate = upstream, make_mutate
        self.server = serve(self._relay, "127.0.0.1", 0, compression=None, close_timeout=1)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _relay(self, client) -> None:
        upstream = websocket.create_connection(self.upstream)
        mutate = self.make_mutate()

        def downstream() -> None:
            with contextlib.suppress(Exception):
                while True:
                    for event in mutate(json.loads(upstream.recv())):
                        client.send(json.dumps(event))
            client.close()

        threading.Thread(target=downstream, daemon=True).start()
        try:
            for message in client:
                upstream.send(message)
        finally:
            upstream.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


def swap_seq_3_and_4():
    """Hold back the chat event with seq 3 until seq 4 has been passed on: one member's order breaks."""
    held = []

    def mutate(event):
        if event["type"] == "chat" and event["seq"] == 3:
            held.append(event)
            return []
        if event["type"] == "chat" and event["seq"] == 4:
            return [event, *held]
        return [event]

    return mutate


def seq_as_string():
    return lambda event: [{**event, "seq": str(event["seq"])} if event["type"] == "chat" else event]


def pong_with_wrong_id():
    return lambda event: [{**event, "id": 999} if event["type"] == "pong" else event]


def too_long_as_bad_message():
    return lambda event: [{**event, "code": "bad_message"} if event.get("code") == "too_long" else event]


def selftest(url: str, only=None, timeout: float = 3) -> tuple[int, list[str]]:
    out = io.StringIO()
    status = run(url, timeout=timeout, only=only, out=out)
    return status, out.getvalue().splitlines()


@pytest.mark.slow
def test_selftest_passes_against_roomchat_process():
    """`python roomchat.py selftest URL` against `python roomchat.py` with default limits: every
    check passes, one line each, exit status 0 (this is how CI runs it against the server under test)."""
    env = roomchat_env(ROOMCHAT_TOKEN_SECRET=SECRET)
    server = subprocess.Popen([*ROOMCHAT, "--port", "0", "--db", ":memory:", "--log-level", "WARNING"], cwd=ROOT,
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        url = next(line.split("listening on ", 1)[1].strip() for line in server.stdout if "listening on" in line)
        result = subprocess.run([*ROOMCHAT, "selftest", url, "--op-token", token("selftest-op", op=True)], cwd=ROOT,
                                env=roomchat_env(), capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
    lines = result.stdout.splitlines()
    assert len({name for name, _ in CHECKS}) == len(CHECKS), "two checks share a name"
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in lines[:-1]] == ["ok"] * len(CHECKS), result.stdout
    assert lines[-1].startswith(f"selftest: {len(CHECKS)} passed, 0 failed, 0 skipped")


def test_selftest_skips_checks_the_limits_make_impractical(make_server):
    """With a huge rate_burst and max_rooms the two checks that would need that many requests say
    skip, with the reason, and the exit status stays 0."""
    server = make_server(rate_burst=100_000, rate_per_second=100_000, max_rooms=10_000)
    status, lines = selftest(server.url, only={"error rate_limited", "error too_many_rooms", "ping"})
    assert status == 0, lines
    assert [line.split()[0] for line in lines[:-1]] == ["ok", "skip", "skip"], lines
    assert "max_rooms is 10000" in lines[1] and "rate_burst is 100000" in lines[2]


@pytest.mark.parametrize(("make_mutate", "broken", "fine"), [
    (swap_seq_3_and_4, "ordering", "ping"),
    (seq_as_string, "chat", "ping"),
    (pong_with_wrong_id, "ping", "chat"),
    (too_long_as_bad_message, "error too_long", "error bad_room"),
])
def test_selftest_names_the_failing_check(make_server, make_mutate, broken, fine):
    """Against a server broken in one way, the check for that behaviour fails (with the reason),
    another still passes, and the exit status is 1."""
    real = make_server()
    relay = BrokenServer(real.url, make_mutate)
    try:
        status, lines = selftest(relay.url, only={broken, fine})
    finally:
        relay.stop()
    assert status == 1, lines
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].split(None, 1)[1].startswith(broken + " "), lines
    assert any(line.startswith("ok") and line.split(None, 1)[1].startswith(fine + " ") for line in lines), lines


def test_selftest_mode_checks_skip_without_an_operator_token(make_server):
    """Without --op-token the checks that need an operator say skip, with the reason; `mode` (a non-operator's
    refusal) still runs."""
    status, lines = selftest(make_server().url, only={"mode", "error moderated", "error slow_mode"})
    assert status == 0, lines
    assert [line.split()[0] for line in lines[:-1]] == ["ok", "skip", "skip"], lines
    assert all("--op-token" in line for line in lines[1:3])


def test_selftest_unreachable_server_exits_2():
    """Nothing listening: one FAIL connect line and exit status 2."""
    with held_port() as port:  # bound, never listening: refused, and no other process can take it
        status, lines = selftest(f"ws://127.0.0.1:{port}/")
    assert status == 2 and len(lines) == 1 and lines[0].startswith("FAIL  connect"), lines


def test_selftest_checks_a_tls_server_with_cafile(tls_server, tls_files):
    """selftest reaches a wss:// server whose certificate a private CA signed, with --cafile."""
    result = subprocess.run([*ROOMCHAT, "selftest", tls_server.url, "--cafile", tls_files.ca, "--only", "ping"],
                            cwd=ROOT, env=roomchat_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ping" in result.stdout


@pytest.mark.slow
def test_selftest_with_the_secret_passes_against_require_token(make_server, tmp_path, capsys):
    """`selftest URL --token-secret-file FILE` against a --require-token server mints a token for
    each connection: exit 0, every check ok but the two nick-change checks, which say skip and why."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    server = make_server(require_token=True, token_secret=SECRET)
    with mock.patch.object(selftest_client, "MINT", None):  # main() sets it for the run
        status = main([server.url, "--token-secret-file", str(secret), "--timeout", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0, lines
    skipped = [line[6:27].strip() for line in lines if line.startswith("skip")]  # the name column
    assert skipped == ["nick", "error nick_taken"], lines
    assert lines[-1].startswith(f"selftest: {len(CHECKS) - 2} passed, 0 failed, 2 skipped")


def test_selftest_refused_for_want_of_a_token_says_so_in_one_line(make_server):
    """Without the secret against a --require-token server: one line with the HTTP status, the
    server's reason and what to give, no response headers, and exit status 2."""
    server = make_server(require_token=True, token_secret=SECRET)
    status, lines = selftest(server.url)
    assert status == 2 and len(lines) == 1, lines
    assert "HTTP 401" in lines[0] and "--token-secret-file" in lines[0], lines
    assert "content-security-policy" not in lines[0].lower() and "{" not in lines[0], lines


def test_selftest_passes_behind_the_proxy_line(make_server):
    """Against a server started with the docs' proxy line (--trusted-proxy 127.0.0.1
    --allowed-hosts chat.example.com), selftest on the machine itself connects and passes."""
    server = make_server(**proxy_line_settings())
    status, lines = selftest(server.url, only={"welcome", "chat", "ping", "resume"})
    assert status == 0 and [line.split()[0] for line in lines[:-1]] == ["ok"] * 4, lines
