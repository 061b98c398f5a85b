"""Logs of a real `python roomchat.py`: a hostile HTTP request line logged at DEBUG stays one
escaped line in both formats, every JSON line parses, a session's lines carry the documented
fields, and no token reaches any line in any format at any level, the trace included."""

import json
import re
import socket
import urllib.request

import pytest

from tests.helpers import ROOT, SECRET, Peer, roomchat_env, run_to_exit, token, wait_for, with_token

# ESC + CSI (clear screen), OSC 52 (write the clipboard), C1 CSI, then CR with a forged record
# and a NEL: none may reach the log raw. No spaces, so the request line still parses.
TARGET = b"/x\x1b[2J\x1b]52;c;aGVsbG8=\x07\x9b31m\rFORGED-RECORD\x85end"
SHOWN = "/x\\x1b[2J\\x1b]52;c;aGVsbG8=\\x07\\x9b31m\\x0dFORGED-RECORD\\x85end"


def hostile_request(port: int) -> bytes:
    """Send GET with TARGET as the request line's target; return the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + TARGET + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return sock.recv(4096).split(b"\r\n", 1)[0]


def raw_controls(log: str) -> list[str]:
    """Characters in `log` that must never be raw: C0 but the line breaks, DEL, C1, U+2028/9."""
    return [c for c in log if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_request_line_is_one_escaped_line(spawn, fmt):
    """At DEBUG a request line carrying ESC, OSC 52, C1 and a CR-forged record is logged as one
    line with each of them escaped; the log holds no raw control character at all."""
    server = spawn("--db", ":memory:", "--log-level", "DEBUG", "--log-format", fmt)
    assert hostile_request(server.port) == b"HTTP/1.1 404 Not Found"
    peer = Peer(server.url)  # a WebSocket client too: connect and disconnect at INFO
    peer.close()
    log = wait_for(lambda: (text := server.stderr_text()) and "disconnect" in text and "FORGED" in text and text)
    assert raw_controls(log) == [], log
    forged = [line for line in log.splitlines() if "FORGED" in line]
    assert len(forged) == 1, log
    if fmt == "text":
        assert "DEBUG roomchat.transport: 127.0.0.1:" in forged[0] and f"http GET {SHOWN}" in forged[0], forged
        return
    records = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "event"} <= set(r) for r in records), records
    hostile = next(r for r in records if "FORGED" in r["event"])
    assert (hostile["level"], hostile["logger"]) == ("DEBUG", "roomchat.transport")
    assert hostile["event"].endswith(f" http GET {SHOWN}"), hostile
    assert [r["event"].split()[0] for r in records if r["level"] == "INFO"][-2:] == ["connect", "disconnect"]


def test_unknown_log_format_is_a_usage_error():
    """--log-format other than text or json exits 2 with a usage line naming the value."""
    result = run_to_exit("--log-format", "xml")
    assert result.returncode == 2 and "log-format 'xml' is not text or json" in result.stderr


def test_json_lines_of_a_scripted_session_carry_peer_nick_room_and_code(spawn):
    """A session at DEBUG in JSON (connect, nick, join, a refused leave and chat, a close) writes
    lines whose `peer`, `nick`, `room` and `code` keys say what each is about."""
    server = spawn("--db", ":memory:", "--log-level", "DEBUG", "--log-format", "json")
    peer = Peer(server.url)
    peer.set_nick("ann")
    peer.join("lobby")
    assert peer.request(type="leave", room="hall")["code"] == "not_in_room"
    assert peer.request(type="chat", room="hall", text="hi")["code"] == "not_in_room"
    peer.close()
    log = wait_for(lambda: (text := server.stderr_text()) and "disconnect" in text and text)
    records = [json.loads(line) for line in log.splitlines()]
    connect = next(r for r in records if r["event"].startswith("connect "))
    assert connect["peer"].startswith("127.0.0.1:") and connect["nick"].startswith("guest-")
    shown = re.search(r'^(\{"time".*\})$', (ROOT / "docs" / "deploy.md").read_text(), re.M).group(1)
    assert list(json.loads(shown)) == list(connect)  # docs/deploy.md's example line has these keys
    nick = next(r for r in records if r["event"].startswith("nick "))
    assert (nick["peer"], nick["nick"]) == (connect["peer"], "ann")
    join = next(r for r in records if r["event"] == "request join")
    assert (join["peer"], join["nick"], join["room"]) == (connect["peer"], "ann", "lobby")
    refused = next(r for r in records if r["event"].startswith("refused leave"))
    assert (refused["nick"], refused["room"], refused["code"]) == ("ann", "hall", "not_in_room")
    refused = next(r for r in records if r["event"].startswith("refused chat"))  # a batch handler's refusal
    assert (refused["nick"], refused["room"], refused["code"]) == ("ann", "hall", "not_in_room")
    disconnect = next(r for r in records if r["event"].startswith("disconnect "))
    assert (disconnect["peer"], disconnect["nick"], disconnect["code"]) == (connect["peer"], "ann", 1000)


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_no_token_reaches_the_log_in_any_format_or_level(spawn, tmp_path, fmt, level):
    """With --trace on, a client with `?token=` that then sends `auth` with a fresh token and
    reconnects with `?resume=`, and plain HTTP requests with `?token=`, `?resume=` and `?invite=`
    in their targets: no line of the log, in either format at any level, holds any of those
    tokens or a token's signature."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    server = spawn("--db", ":memory:", "--log-level", level, "--log-format", fmt, "--trace",
                   "--token-secret-file", str(secret_file), env=roomchat_env())
    first, second = token("ann"), token("ann", ttl=7200)
    peer = Peer(with_token(server.url, first))
    resume = peer.welcome["resume"]
    assert peer.request(type="auth", token=second, id=1)["type"] != "error"
    peer.join("lobby")
    secrets = [first, second, resume, "invite-secret-42"]
    for target in (f"/?token={first}", f"/?nick=ann&resume={resume}", "/?invite=invite-secret-42"):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}{target}", timeout=5).close()
    peer.ws.close()
    again = Peer(f"{server.url}?token={second}&resume={resume}")
    again.close()
    assert server.stop() == 0
    log = server.stderr_text()
    assert "roomchat.trace" in log  # the trace ran, so the auth request was narrated
    for secret in secrets:
        assert secret not in log, (secret, log)
    for signed in (first, second):
        assert signed.rsplit(".", 1)[1] not in log, log
