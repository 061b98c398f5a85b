"""`python roomchat.py client` as a subprocess with pipes against a real server: commands, exit
status, refusals, reconnects. Under a pseudo-terminal: test_terminal_client_tty.py; against a
hostile server: test_terminal_client_hostile.py."""

import signal
import subprocess
import time

import pytest

from chatserver.engines.memory import MemoryEngine
from tests.client_helpers import CLIENT, ClientProcess
from tests.helpers import Peer, closing_all, events_until, held_port, restart, roomchat_env, server_with_chats


def run_pipe(url: str | None, stdin: str, *args: str, timeout: float = 20, env=None) -> subprocess.CompletedProcess:
    argv = [*CLIENT, *([url] if url else []), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def client():
    """client(url, *args) -> ClientProcess; any still running is killed at teardown."""
    yield from closing_all(ClientProcess, close=ClientProcess.kill)


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
    """More lines than twice the server's burst are paced, never refused with rate_limited.
    The server judges a line when it reads it: lines that wait in its socket while its thread is
    held up come in together, and more than a burst of them at once would be refused. A burst
    of 20 at 20 a second leaves a second's margin for that on a loaded machine."""
    strict = make_server(rate_burst=20, rate_per_second=20)
    peer = connect(strict.url)
    peer.join("lobby")
    lines = [f"line {n}" for n in range(45)]
    result = run_pipe(strict.url, "\n".join(lines) + "\n", "--room", "lobby")
    assert result.returncode == 0, result
    assert "Slow down" not in result.stdout
    assert [e["text"] for e in chats(peer, 45)] == lines


def test_refused_connection_exits_one_with_one_line():
    """Nothing listening: exit 1 and one line on stderr saying why, not a traceback."""
    with held_port() as port:  # bound, never listening: refused, and no other process can take it
        result = run_pipe(f"ws://127.0.0.1:{port}/", "hello\n", "--room", "lobby")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "cannot connect" in result.stderr and "refused" in result.stderr.lower()


def test_refused_message_prints_the_reason_and_exits_one(server):
    """A dm to nobody prints the server's sentence; the run exits 1 with one stderr line saying so."""
    result = run_pipe(server.url, "/msg nobody hello\n/quit\n")
    assert result.returncode == 1
    assert "Nobody called 'nobody' is connected." in result.stdout
    assert result.stderr.splitlines() == [
        "roomchat client: 1 request refused: direct message to nobody: Nobody called 'nobody' is connected."]


def test_taken_nick_in_a_pipe_posts_nothing_and_exits_one(server, connect):
    """A pipe whose --nick is taken sends none of its lines (not even as a guest) and exits 1,
    with one stderr line naming the refused nick."""
    ann = connect()
    ann.set_nick("ann")
    ann.join("lobby")
    result = run_pipe(server.url, "build is green\n", "--nick", "ann", "--room", "lobby")
    assert result.returncode == 1, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "1 request refused: nick ann:" in result.stderr and "taken" in result.stderr
    assert "Nothing was sent" in result.stdout
    history = connect().join("lobby")["history"]
    assert history == []


@pytest.mark.parametrize("stdin", ["hello\n", "hello\n/quit\n"])
def test_text_without_a_room_in_a_pipe_exits_one(server, stdin):
    """Piped text without --room (or a /join before it) goes nowhere: exit 1, one stderr line why."""
    result = run_pipe(server.url, stdin)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        "roomchat client: 1 request refused: 'hello': You are in no room; --room ROOM or a /join ROOM line "
        "must come first."]


def test_bad_room_or_nick_says_why(server):
    """/join with an invalid room name says which characters are not allowed; so does --room,
    as a usage error (exit 2) before connecting."""
    result = run_pipe(server.url, "/join bad room!\n/unknown\n")
    assert "'bad room!' is not a valid room name" in result.stdout
    assert "may not contain a space or '!'" in result.stdout
    assert "Unknown command /unknown" in result.stdout
    assert result.returncode == 1 and "2 requests refused" in result.stderr
    bad = run_pipe(server.url, "", "--room", "bad room!")
    assert bad.returncode == 2
    assert "--room: 'bad room!' is not a valid room name" in bad.stderr


def test_default_address_follows_roomchat_host_and_port(server, connect):
    """Without a URL the client connects where ROOMCHAT_HOST / ROOMCHAT_PORT say the server is."""
    peer = connect()
    peer.join("lobby")
    env = roomchat_env(ROOMCHAT_HOST="127.0.0.1", ROOMCHAT_PORT=str(server.port))
    result = run_pipe(None, "found you\n", "--room", "lobby", env=env)
    assert result.returncode == 0, result
    assert peer.recv_type("chat")["text"] == "found you"


def test_wss_with_a_cafile_or_roomchat_cafile(tls_server, tls_files, peers):
    """A wss:// address works when --cafile (or ROOMCHAT_CAFILE) names the CA of the server's
    certificate; without it the client says the certificate is not trusted and exits 1."""
    peer = peers(tls_server.url, sslopt={"ca_certs": tls_files.ca})
    peer.join("lobby")
    sent = run_pipe(tls_server.url, "over wss\n", "--room", "lobby", "--cafile", tls_files.ca)
    assert (sent.returncode, sent.stderr) == (0, "")
    assert peer.recv_type("chat")["text"] == "over wss"
    sent = run_pipe(tls_server.url, "from the variable\n", "--room", "lobby",
                    env=roomchat_env(ROOMCHAT_CAFILE=tls_files.ca))
    assert sent.returncode == 0
    assert peer.recv_type("chat")["text"] == "from the variable"
    refused = run_pipe(tls_server.url, "untrusted\n", "--room", "lobby", env=roomchat_env())
    assert refused.returncode == 1
    assert "certificate is not trusted" in refused.stderr and "--cafile" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


def test_sigint_closes_the_connection_and_exits_130(server, client, connect):
    """Ctrl-C (SIGINT) with a pipe: the client leaves at once (the room sees it go) and exits 130."""
    peer = connect()
    peer.join("lobby")
    ann = client(server.url, "--nick", "ann", "--room", "lobby")
    ann.expect("you joined lobby")
    assert peer.recv_type("presence")["event"] == "join"
    ann.proc.send_signal(signal.SIGINT)
    assert ann.wait() == 130
    assert peer.recv_type("presence") == {"type": "presence", "room": "lobby", "event": "leave", "nick": "ann"}


def test_commands_and_incoming_events(server, connect, client):
    """Each command does what /help says; incoming events print with time, room and sender."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("dev")
    ann = client(server.url, "--nick", "ann", "--room", "dev")
    ann.expect("you joined dev: 2 members")
    assert bob.recv_type("presence") == {"type": "presence", "room": "dev", "event": "join", "nick": "ann"}

    bob.send(type="chat", room="dev", text="hi ann")
    assert ann.expect("<bob> hi ann").split(" ", 1)[1] == "[dev] #1 <bob> hi ann"
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
    ann.expect("[lobby] #1 <annie> now in the lobby")
    ann.type("/leave dev")
    ann.expect("you left dev; now in lobby")
    assert bob.recv_type("presence")["event"] == "leave"
    ann.type("/help")
    ann.expect("/msg NICK TEXT")
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
    ann.type("/history 1")
    ann.expect("last 1 message in lobby")
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


def test_reconnect_keeps_asking_for_the_nick_until_the_old_connection_is_gone(relay, connect, client):
    """After a drop the server has not noticed, a reconnect whose resume token the server does not
    know gets a guest nick: the client sends nothing as that guest, asks for its nick again until
    it is free, then sends what was typed meanwhile under its own nick."""
    peer = connect()
    peer.set_nick("bob")
    peer.join("lobby")
    ann = client(relay.url, "--nick", "ann", "--room", "lobby")
    ann.expect("you joined lobby")
    relay.spend_resume_tokens = True
    relay.cut_client_side()
    ann.expect("connection lost")
    ann.expect("still held by your previous connection", timeout=20)
    assert b"resume=never-given" in relay.requests[-1]
    ann.type("typed while held")
    assert "ann" in connect().request(type="who", room="lobby")["members"]  # the old connection
    relay.cut_server_side()
    ann.expect("you are now known as ann", timeout=10)
    event = peer.recv_type("chat")
    assert (event["from"], event["text"]) == ("ann", "typed while held")
    assert ann.finish() == 0


def test_silent_drop_is_detected_and_resumed_without_a_flap(relay, connect, client):
    """A connection that goes silent (no FIN, no RST) is found dead by the client's ping
    (--ping-interval 1 --ping-timeout 1: within about 2 s); the client reconnects with its resume
    token and within a second has its nick and room back, with what was said meanwhile, while
    the room's other members see no leave and join."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    ann = client(relay.url, "--nick", "ann", "--room", "lobby", "--ping-interval", "1", "--ping-timeout", "1")
    ann.expect("you joined lobby")
    assert bob.recv_type("presence") == {"type": "presence", "room": "lobby", "event": "join", "nick": "ann"}
    silent_at = time.monotonic()
    relay.go_silent()
    bob.send(type="chat", room="lobby", text="while you were gone")
    lost = ann.expect_at("connection lost", timeout=10)
    back = ann.expect_at("reconnected; the server kept your nick and rooms", timeout=10)
    missed = ann.expect_at("<bob> while you were gone", timeout=10)
    assert ann.arrivals[lost] - silent_at < 4  # ping_interval + ping_timeout, and some slack
    assert ann.arrivals[missed] - ann.arrivals[back] < 1
    assert b"resume=" in relay.requests[-1] and len(relay.requests) == 2
    ann.type("back again")
    events = events_until(bob, lambda e: e.get("text") == "back again")
    assert [e["type"] for e in events] == ["chat", "chat"]  # bob's own, then ann's: no presence
    assert events[-1]["from"] == "ann"
    assert bob.request(type="who", room="lobby")["members"] == ["bob", "ann"]
    assert sum("you are now known as" in line for line in ann.lines) == 1  # no second nick request
    assert ann.finish() == 0
