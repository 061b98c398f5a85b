"""`python roomchat.py client` as a subprocess against a real server: pipes, commands, reconnects."""

import contextlib
import queue
import socket
import subprocess
import threading
import time

import pytest

from chatserver.engine import MemoryEngine
from tests.helpers import ROOMCHAT, Peer, closing_all, restart, server_with_chats

CLIENT = [*ROOMCHAT, "client"]


def run_pipe(url: str, stdin: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIENT, url, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


class ClientProcess:
    """The client with its stdin open, so a test can type lines and wait for output lines."""

    def __init__(self, url: str, *args: str):
        self.proc = subprocess.Popen([*CLIENT, url, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self._new: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self._new.put(line.rstrip("\n"))

    def type(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, text: str, timeout: float = 10, ending: bool = False) -> str:
        """The first line (seen before or arriving within `timeout`) containing, or with
        `ending` ending with, `text`."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.lines if (line.endswith(text) if ending else text in line)), None)
            if found:
                return found
            try:
                self.lines.append(self._new.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}; got {self.lines}") from None

    def finish(self, timeout: float = 15) -> int:
        """Close stdin (end of input) and return the exit status."""
        self.proc.stdin.close()
        status = self.proc.wait(timeout)
        while not self._new.empty():
            self.lines.append(self._new.get())
        return status

    def kill(self) -> None:
        """Kill it if it still runs, and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)  # it reads stdout until EOF
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


@pytest.fixture
def client():
    """client(url, *args) -> ClientProcess; any still running is killed at teardown."""
    yield from closing_all(ClientProcess, close=ClientProcess.kill)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chats(peer: Peer, count: int) -> list[dict]:
    return [peer.recv_type("chat") for _ in range(count)]


def test_pipe_joins_sends_and_exits_zero(server, connect):
    """printf 'hello\\n/quit\\n' | client --room lobby: the message arrives and the client exits 0."""
    peer = connect()
    peer.join("lobby")
    result = run_pipe(server.url, "hello\n/quit\n", "--room", "lobby", "--nick", "piper")
    assert result.returncode == 0, result
    assert result.stderr == ""
    assert "<piper> hello" in result.stdout
    event = peer.recv_type("chat")
    assert (event["from"], event["text"], event["seq"]) == ("piper", "hello", 1)


def test_end_of_input_waits_for_every_confirmation(server, connect):
    """Without /quit, end of input still waits until the server confirmed each line, in order."""
    peer = connect()
    peer.join("lobby")
    result = run_pipe(server.url, "one\ntwo\nthree\n", "--room", "lobby")
    assert result.returncode == 0, result
    assert [e["text"] for e in chats(peer, 3)] == ["one", "two", "three"]


def test_a_long_pipe_is_paced_under_the_rate_limit(make_server, connect):
    """More lines than the server's burst are paced, never refused with rate_limited."""
    strict = make_server(rate_burst=4, rate_per_second=40)
    peer = connect(strict.url)
    peer.join("lobby")
    lines = [f"line {n}" for n in range(30)]
    result = run_pipe(strict.url, "\n".join(lines) + "\n", "--room", "lobby")
    assert result.returncode == 0, result
    assert "Slow down" not in result.stdout
    assert [e["text"] for e in chats(peer, 30)] == lines


def test_refused_connection_exits_one_with_one_line():
    """Nothing listening: exit 1 and one line on stderr saying why, not a traceback."""
    result = run_pipe(f"ws://127.0.0.1:{free_port()}/", "hello\n", "--room", "lobby")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "cannot connect" in result.stderr and "refused" in result.stderr.lower()


def test_refused_message_prints_the_reason_and_exits_one(server):
    """A dm to nobody prints the server's sentence; the run exits 1 since a message was not delivered."""
    result = run_pipe(server.url, "/msg nobody hello\n/quit\n")
    assert result.returncode == 1
    assert "Nobody called 'nobody' is connected." in result.stdout
    assert "Traceback" not in result.stderr


def test_commands_and_incoming_events(server, connect, client):
    """Each command does what /help says; incoming events print with time, room and sender."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("dev")
    ann = client(server.url, "--nick", "ann", "--room", "dev")
    ann.expect("you joined dev: 2 members")
    assert bob.recv_type("presence") == {"type": "presence", "room": "dev", "event": "join", "nick": "ann"}

    bob.send(type="chat", room="dev", text="hi ann")
    assert ann.expect("<bob> hi ann").split(" ", 1)[1] == "[dev] <bob> hi ann"
    ann.type("/who")
    ann.expect("dev: 2 members: bob, ann")
    ann.type("/rooms")
    ann.expect("rooms: dev (2)")
    ann.type("/msg bob psst")
    assert bob.recv_type("dm")["text"] == "psst"
    ann.expect("[dm] <ann> -> bob: psst")
    ann.type("/nick annie")
    ann.expect("you are now known as annie")
    assert bob.recv_type("nick") == {"type": "nick", "old": "ann", "nick": "annie"}
    ann.type("/join lobby")
    ann.expect("you joined lobby: 1 member: annie")
    ann.type("now in the lobby")
    ann.expect("[lobby] <annie> now in the lobby")
    ann.type("/leave dev")
    ann.expect("you left dev; now in lobby")
    assert bob.recv_type("presence")["event"] == "leave"
    ann.type("/help")
    ann.expect("/msg NICK TEXT")
    ann.type("/bogus")
    ann.expect("Unknown command /bogus")
    ann.type("/quit")
    assert ann.finish() == 0


def test_join_shows_recent_history_and_history_command_more(make_server, connect, client):
    """Joining prints the last 20 messages; /history N prints the last N."""
    busy = server_with_chats(make_server, connect, [f"old {n}" for n in range(1, 26)])
    ann = client(busy.url, "--room", "lobby")
    ann.expect("> old 25")
    ann.expect("> old 6", ending=True)
    assert not any(line.endswith("> old 5") for line in ann.lines)
    ann.type("/history 25")
    ann.expect("last 25 messages in lobby")
    ann.expect("> old 1", ending=True)
    assert ann.finish() == 0


def test_reconnect_after_restart_resumes_without_gap_or_duplicate(make_server, server, connect, client):
    """After a restart the client rejoins with `after`: missed messages print once, then it goes on."""
    ann = client(server.url, "--nick", "ann", "--room", "lobby")
    ann.expect("you joined lobby")
    ann.type("before the restart")
    ann.expect("<ann> before the restart")

    restarted = restart(make_server, server)
    carol = connect(restarted.url)
    carol.set_nick("carol")
    carol.join("lobby")
    carol.send(type="chat", room="lobby", text="while you were away")
    ann.expect("connection lost")
    ann.expect("reconnected", timeout=20)
    ann.expect("<carol> while you were away")
    ann.type("after the restart")
    assert carol.recv_type("chat")["seq"] == 2  # its own
    event = carol.recv_type("chat")
    assert (event["from"], event["text"], event["seq"]) == ("ann", "after the restart", 3)
    assert ann.finish() == 0
    for text in ("before the restart", "while you were away", "after the restart"):
        assert sum(line.endswith(text) for line in ann.lines) == 1, ann.lines


def test_new_epoch_rejoins_afresh(make_server, server, connect, client):
    """A restarted server with another epoch: the client says so and rejoins without `after`."""
    ann = client(server.url, "--room", "lobby")
    ann.type("old world")
    ann.expect("> old world")
    restarted = restart(make_server, server, engine=MemoryEngine())
    ann.expect("history was reset", timeout=20)
    ann.type("new world")
    ann.expect("> new world")
    assert [e["text"] for e in connect(restarted.url).join("lobby")["history"]] == ["new world"]
    assert ann.finish() == 0


def test_control_characters_are_shown_not_obeyed(server, connect, client):
    """Terminal escape sequences in a message print as visible text, never reaching the terminal raw."""
    ann = client(server.url, "--room", "lobby")
    ann.expect("you joined lobby")
    peer = connect()
    peer.join("lobby")
    peer.send(type="chat", room="lobby", text="\x1b[2Jcleared?\x07")
    line = ann.expect("cleared?")
    assert "\x1b" not in line and "\\x1b[2Jcleared?\\x07" in line
    assert ann.finish() == 0


def test_help_option():
    """`client --help` explains the arguments and the exit status."""
    result = subprocess.run([*CLIENT, "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "--nick" in result.stdout and "--room" in result.stdout and "Exit status" in result.stdout
