"""Logs of a real `python roomchat.py`: a hostile HTTP request line logged at DEBUG stays one
escaped line in both formats, and every JSON line parses."""

import json
import socket

import pytest

from tests.helpers import Peer, run_to_exit, wait_for

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
