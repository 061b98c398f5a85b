"""`python roomchat.py` as a process: start-up output, signals, settings, --help, start-up errors, logging."""

import json
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import fields

import pytest
import websocket

from chatserver.config import Config
from tests.helpers import ROOMCHAT, ROOT, closing_all, roomchat_env, run_to_exit, wait_for

pytestmark = pytest.mark.timeout(30)  # a hang detector: Pythons started under coverage are slow on a busy machine


@pytest.fixture
def sockets():
    """sockets(url) -> a websocket-client connection (welcome not read); all dropped at teardown."""
    yield from closing_all(lambda url: websocket.create_connection(url, timeout=5), close=lambda ws: ws.shutdown())


def close_code(ws: websocket.WebSocket) -> int:
    """Read frames until the server's close frame (answering it, as recv_data_frame does); its code."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


def address(ws: websocket.WebSocket) -> str:
    """The client's own end of the connection, as the server sees it: host:port."""
    return "{}:{}".format(*ws.sock.getsockname()[:2])


def other_machines_line(server) -> str:
    """The page's address for other machines a server bound to every interface printed, after
    its `open ... in your browser` line for this machine (127.0.0.1, not the wildcard address);
    skips on a machine with no route (then it prints a hint, not an address)."""
    assert server.proc.stdout.readline() == f"open http://127.0.0.1:{server.port}/ in your browser\n"
    line = server.proc.stdout.readline()
    if "<this machine's address>" in line:
        pytest.skip("this machine has no route: no address for other machines to print")
    return line


def test_on_every_interface_it_prints_the_page_for_this_machine_and_for_others(spawn):
    """With --host 0.0.0.0 the page's address to open here is 127.0.0.1, and the next line gives
    the address other machines use (this machine's on its default route), which serves the page."""
    server = spawn("--host", "0.0.0.0", "--port", "0", "--db", ":memory:", defaults=())
    port = server.port
    assert server.lines[-1] == f"roomchat listening on ws://0.0.0.0:{port}/"
    line = other_machines_line(server)
    match = re.fullmatch(rf"from other machines: http://([0-9.]+):{port}/\n", line)
    assert match and not match.group(1).startswith("127."), line
    with urllib.request.urlopen(f"http://{match.group(1)}:{port}/", timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read().lower()


def test_an_address_the_host_check_would_refuse_is_printed_with_the_option_it_needs(spawn):
    """With --allowed-hosts naming only a host name, this machine's address would get 400: the
    line says so and names the option, and the address is indeed refused until it is listed."""
    server = spawn("--host", "0.0.0.0", "--port", "0", "--db", ":memory:", "--allowed-hosts", "chat.example.com",
                   defaults=())
    line = other_machines_line(server)
    match = re.fullmatch(rf"from other machines: http://([0-9.]+):{server.port}/ once --allowed-hosts lists \1\n",
                         line)
    assert match, line
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{match.group(1)}:{server.port}/", timeout=30)
    assert refused.value.code == 400


def test_prints_where_it_listens_and_two_clients_chat_through_it(spawn, sockets):
    """With --port 0 --db :memory: it prints its ws:// and http:// addresses, and two websocket-client
    sessions chat through it as in docs/how-it-works.md: nick, join, chat, the other gets it with seq 1."""
    server = spawn("--port", "0", "--db", ":memory:", defaults=())
    port = server.port
    assert port > 0
    assert server.lines[-1] == f"roomchat listening on ws://127.0.0.1:{port}/"
    assert server.proc.stdout.readline() == f"open http://127.0.0.1:{port}/ in your browser\n"

    alice = sockets(server.url)
    assert json.loads(alice.recv())["nick"] == "guest-1"  # welcomed before bob connects: guest numbers follow
    bob = sockets(server.url)
    assert json.loads(bob.recv())["nick"] == "guest-2"
    alice.send(json.dumps({"type": "nick", "nick": "alice"}))
    assert json.loads(alice.recv()) == {"type": "nick", "old": "guest-1", "nick": "alice"}
    for ws in (alice, bob):
        ws.send(json.dumps({"type": "join", "room": "lobby"}))
        assert json.loads(ws.recv())["type"] == "joined"
    assert json.loads(alice.recv()) == {"type": "presence", "room": "lobby", "event": "join", "nick": "guest-2"}
    alice.send(json.dumps({"type": "chat", "room": "lobby", "text": "hello bob", "id": 1}))
    assert json.loads(alice.recv())["id"] == 1
    event = json.loads(bob.recv())
    assert {k: event[k] for k in ("type", "room", "from", "text", "seq")} == {
        "type": "chat", "room": "lobby", "from": "alice", "text": "hello bob", "seq": 1}
    assert "id" not in event and isinstance(event["ts"], float)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_every_client_with_1001_and_exits_0_promptly(spawn, sockets, raw_clients, sig):
    """On SIGTERM or SIGINT a client that answers and one that never reads both get close 1001,
    and the process exits with status 0 once its shutdown grace (1.5 s) is over, not waiting
    for the silent client."""
    server = spawn("--db", ":memory:")
    answering = sockets(server.url)
    answering.recv()  # welcome
    silent = raw_clients(server.port)  # reads its welcome, then nothing until the process is gone
    signalled = time.monotonic()
    server.proc.send_signal(sig)
    assert close_code(answering) == 1001
    status = server.proc.wait(15)
    took = time.monotonic() - signalled
    assert status == 0
    assert took < 10, f"exited {took:.2f} s after the signal"  # the grace and slack for a loaded machine
    assert silent.read_close(reply=False) == 1001


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_again_while_shutting_down_change_nothing(spawn, sockets, sig):
    """Ctrl-C pressed again, or a supervisor's repeated SIGTERM: the shutdown under way goes on
    (its clients get 1001) and the process still exits 0, whenever the later signals land, up to
    the last moment of the interpreter's exit (one landing there ended it with -15 before)."""
    server = spawn("--db", ":memory:")
    client = sockets(server.url)
    client.recv()  # welcome
    sent = 0
    while server.proc.poll() is None:  # signal after signal until the process is gone
        try:
            server.proc.send_signal(sig)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(0.001)
    assert server.proc.wait(15) == 0, (sent, server.stderr_text())
    assert close_code(client) == 1001


def test_settings_from_the_environment(spawn, peers):
    """ROOMCHAT_MAX_TEXT_CHARS=123 and ROOMCHAT_RATE_BURST=7 show in welcome.limits; ROOMCHAT_PORT=0
    (no --port) listens on a free port."""
    env = roomchat_env(ROOMCHAT_PORT="0", ROOMCHAT_MAX_TEXT_CHARS="123", ROOMCHAT_RATE_BURST="7")
    server = spawn("--db", ":memory:", defaults=(), env=env)
    assert server.port not in (0, Config.port)
    limits = peers(server.url).welcome["limits"]
    assert (limits["max_text_chars"], limits["rate_burst"]) == (123, 7)


def test_command_line_wins_over_the_environment(spawn, peers):
    """--max-text-chars 50 with ROOMCHAT_MAX_TEXT_CHARS=123 set: welcome says 50, and 51 characters are too long."""
    env = roomchat_env(ROOMCHAT_MAX_TEXT_CHARS="123")
    server = spawn("--db", ":memory:", "--max-text-chars", "50", env=env)
    peer = peers(server.url)
    assert peer.welcome["limits"]["max_text_chars"] == 50
    peer.join("lobby")
    assert peer.request(type="chat", room="lobby", text="x" * 51)["code"] == "too_long"
    assert peer.request(type="chat", room="lobby", text="x" * 50)["seq"] == 1


def test_help_lists_every_option_with_its_variable():
    """--help exits 0 and lists every setting (each Config field, each row of docs/settings.md's
    table) together with its ROOMCHAT_* variable."""
    done = run_to_exit("--help")
    assert done.returncode == 0 and done.stderr == ""
    entries = re.split(r"\n(?=  -)", done.stdout.split("\noptions:\n", 1)[1])  # one per option, wrapped lines joined
    help_for = {entry.split()[0]: " ".join(entry.split()) for entry in entries}
    table = (ROOT / "docs" / "settings.md").read_text()
    documented = re.findall(r"^\| `(--[a-z-]+)` \| `(ROOMCHAT_[A-Z_]+)` \|", table, re.M)
    settings = [("--" + f.name.replace("_", "-"), "ROOMCHAT_" + f.name.upper()) for f in fields(Config)]
    assert sorted(documented) == sorted(settings)
    for option, variable in settings:
        assert f"[{variable}]" in help_for.get(option, ""), (option, help_for.get(option))


@pytest.mark.timeout(60)  # four Pythons started one after the other: slow on a busy machine, not a hang
def test_help_lists_every_subcommand_with_one_line():
    """--help names each subcommand (client, selftest, token, and any other in roomchat.COMMANDS)
    on a line of its own with what it does, and each subcommand answers its own --help."""
    import roomchat

    assert {"client", "selftest", "token"} <= set(roomchat.COMMANDS)
    done = run_to_exit("--help")
    for name, (_, _, line) in roomchat.COMMANDS.items():
        assert re.search(rf"^  roomchat\.py {name} +{re.escape(line)}$", done.stdout, re.M), (name, done.stdout)
        assert f"{{{','.join(roomchat.COMMANDS)}}}" in done.stdout.split("\n\n", 1)[0]  # in the usage
        sub = subprocess.run([*ROOMCHAT, name, "--help"], cwd=ROOT, env=roomchat_env(), capture_output=True,
                             text=True, timeout=30)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: roomchat.py {name}"), (name, sub)


@pytest.mark.parametrize("holder", ["another program", "another roomchat"])
def test_port_in_use_exits_2_with_one_line(spawn, holder):
    """A port something else listens on: exit status 2 and exactly one line on stderr, no traceback."""
    with socket.socket() as taken:
        if holder == "another roomchat":
            port = spawn("--db", ":memory:").port
        else:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
        done = run_to_exit("--port", str(port), "--db", ":memory:")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    assert done.stderr.startswith(f"roomchat: cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert "in use" in done.stderr and "Traceback" not in done.stderr
    assert "another --port" in done.stderr  # says what to do
    assert "listening" not in done.stdout


def test_log_has_one_connect_and_one_disconnect_line_per_client(spawn, sockets):
    """At --log-level INFO each WebSocket client gets one `connect <peer> <nick>` and one
    `disconnect <peer> <nick>: <reason>` line, <peer> being the client's own address; invalid
    UTF-8, a binary frame or malformed JSON log no traceback, and plain HTTP logs neither line."""
    server = spawn("--db", ":memory:", "--log-level", "INFO")
    expected = {}  # peer -> (nick on connect, nick on disconnect, start of the reason)

    def client(nick_later=None):
        ws = sockets(server.url)
        nick = json.loads(ws.recv())["nick"]
        if nick_later:
            ws.send(json.dumps({"type": "nick", "nick": nick_later}))
            assert json.loads(ws.recv())["nick"] == nick_later
        return ws, nick

    ws, nick = client(nick_later="alice")
    expected[address(ws)] = (nick, "alice", "client closed (1000)")
    ws.close()

    ws, nick = client()
    expected[address(ws)] = (nick, nick, "connection lost")
    ws.shutdown()  # TCP gone without a close frame

    ws, nick = client()
    expected[address(ws)] = (nick, nick, "closed by server (1007 ")
    ws.send(b"\xff\xfe not UTF-8", opcode=websocket.ABNF.OPCODE_TEXT)
    assert close_code(ws) == 1007
    ws.shutdown()

    ws, nick = client()
    expected[address(ws)] = (nick, nick, "closed by server (1003 ")
    ws.send_binary(b"\x00\x01")
    assert close_code(ws) == 1003
    ws.shutdown()

    ws, nick = client()
    expected[address(ws)] = (nick, nick, "client closed (1000)")
    ws.send('{"type": "ping"')
    assert json.loads(ws.recv())["code"] == "bad_json"
    ws.close()

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        assert response.status == 200

    wait_for(lambda: server.stderr_text().count(": disconnect ") == len(expected), timeout=5)
    assert server.stop() == 0
    log = server.stderr_text()
    fields = r"(?: (?:peer|nick|code)=\S+)*$"  # the log fields the text format appends (ops/logs.py)
    connects = re.findall(rf": connect (\S+) (\S+){fields}", log, re.M)
    disconnects = re.findall(rf": disconnect (\S+) (\S+): (.+?){fields}", log, re.M)
    assert sorted(connects) == sorted((peer, nick) for peer, (nick, _, _) in expected.items()), log
    assert len(disconnects) == len(expected), log
    for peer, nick, reason in disconnects:
        _, nick_then, reason_start = expected[peer]
        assert (nick, reason[: len(reason_start)]) == (nick_then, reason_start), (peer, nick, reason)
    assert "Traceback" not in log and " ERROR " not in log, log
