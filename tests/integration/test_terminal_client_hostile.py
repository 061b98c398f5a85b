"""The terminal client against a fake server that breaks the protocol or sends hostile text: every
bad event prints one line and the client goes on; every field is shown safely; Ctrl-C closes 1000."""

import json
import signal

import pytest

from tests.client_helpers import ClientProcess, FakeServer, expect_request
from tests.helpers import closing_all


@pytest.fixture
def fake():
    """fake(script, welcome=None) -> FakeServer; all shut down at teardown."""
    yield from closing_all(FakeServer)


@pytest.fixture
def client():
    """client(url, *args) -> ClientProcess; any still running is killed at teardown."""
    yield from closing_all(ClientProcess, close=ClientProcess.kill)


def joined(join: dict, **fields) -> str:
    return json.dumps({"type": "joined", "room": join["room"], "members": ["guest-1"], "history": [],
                       "id": join["id"], **fields})


def chat(seq, text="hi", **fields) -> dict:
    return {"type": "chat", "room": "lobby", "from": "bob", "text": text, "seq": seq, "ts": 1.0, **fields}


BAD = [  # (what the server sends, a piece of the one line the client prints for it)
    (json.dumps({k: v for k, v in chat(1).items() if k != "seq"}), "a chat event without 'seq'"),
    (json.dumps(chat("2")), "a chat event whose 'seq' is not an integer"),
    (json.dumps(chat(3, text=None)), "a chat event whose 'text' is not a string"),
    (json.dumps({"type": "who", "room": "lobby", "members": "everyone"}), "'members' is not a list of strings"),
    (json.dumps({"type": "joined", "room": "x", "members": [], "history": [{"seq": 1}]}),
     "a joined event with a chat event in its 'history' without 'room'"),
    (json.dumps({"type": "rooms", "rooms": [{"room": "x", "members": "3"}]}), "'members' is not an integer"),
    (json.dumps({"type": "error", "message": "no code"}), "an error event without 'code'"),
    (json.dumps({"type": "presence", "room": "lobby", "event": "join", "nick": 7}), "'nick' is not a string"),
    (json.dumps({"type": "surprise"}), "an event of unknown type 'surprise'"),
    (json.dumps({"type": "welcome", "nick": "guest-9"}), "an unexpected welcome event"),
    (json.dumps({**chat(4), "id": [1]}), "'id' is not an integer or a string"),
    (json.dumps({"type": 5}), "an event without a string 'type'"),
    (json.dumps([1, 2]), "a message that is not a JSON object"),
    ("{not json", "a message that is not JSON"),
    ("[" * 100_000 + "]" * 100_000, "a message that is not JSON"),
    (b"\x00binary", "a binary message"),
]


def test_malformed_events_print_one_line_each_and_the_client_goes_on(fake, client):
    """Each broken event (missing or mistyped fields, unknown types, not JSON, binary) prints one
    line saying what was wrong; the events after it are shown as usual and the run ends normally."""
    def script(conn, received):
        conn.send(joined(expect_request(received, "join")))
        for message, _ in BAD:
            conn.send(message)
        conn.send(json.dumps(chat(5, "still here")))
        expect_request(received, None, timeout=30)  # keep the connection until the client goes

    server = fake(script)
    ann = client(server.url, "--room", "lobby")
    ann.expect("<bob> still here")
    for _, said in BAD:
        ann.expect(said)
    complaints = [line for line in ann.lines if "The server sent" in line]
    assert len(complaints) == len(BAD), complaints
    assert all(line.endswith("; ignored.") for line in complaints)
    assert ann.finish() == 0
    assert "Traceback" not in ann.stderr()
    assert server.wait_closed() == [1000]


def test_a_malformed_answer_to_a_request_counts_as_refused(fake, client):
    """A broken answer to our own message does not leave the run waiting for it: it ends with 1
    and one stderr line saying what the server answered."""
    def script(conn, received):
        conn.send(joined(expect_request(received, "join")))
        sent = expect_request(received, "chat")
        conn.send(json.dumps({"type": "chat", "room": "lobby", "id": sent["id"]}))
        expect_request(received, None, timeout=30)

    ann = client(fake(script).url, "--room", "lobby")
    ann.type("hello")
    ann.expect("a chat event without 'from'")
    assert ann.finish() == 1
    assert ann.stderr().splitlines() == [
        "roomchat client: 1 request refused: message to lobby: the server's answer was a chat event without 'from'"]


def test_every_field_is_shown_safely(fake, client):
    """Controls, bidi overrides and zero-width characters in nicks, rooms, member lists, errors
    and text appear as visible escapes, never raw."""
    nasty = {"esc": "\x1b[2J", "rlo": "\u202e", "lri": "\u2066", "lrm": "\u200e", "zwsp": "\u200b",
             "zwj": "\u200d", "wj": "\u2060", "bom": "\ufeff", "c1": "\x9b", "bell": "\x07", "nl": "\n"}
    mixed = "".join(nasty.values())

    def script(conn, received):
        join = expect_request(received, "join")
        conn.send(joined(join, members=[f"m{mixed}", "guest-1"]))
        conn.send(json.dumps({"type": "presence", "room": "lobby", "event": "join", "nick": f"p{mixed}"}))
        conn.send(json.dumps({"type": "nick", "old": f"o{mixed}", "nick": f"n{mixed}"}))
        conn.send(json.dumps(chat(1, text=f"t{mixed}", room="lobby", **{"from": f"f{mixed}"})))
        conn.send(json.dumps({"type": "dm", "from": f"d{mixed}", "to": "guest-1", "text": f"x{mixed}"}))
        conn.send(json.dumps({"type": "rooms", "rooms": [{"room": f"r{mixed}", "members": 2}]}))
        conn.send(json.dumps({"type": "error", "code": "bad", "message": f"e{mixed}"}))
        conn.send(json.dumps({"type": "presence", "room": f"w{mixed}", "event": f"v{mixed}", "nick": "z"}))
        conn.send(json.dumps(chat(2, "done")))
        expect_request(received, None, timeout=30)

    ann = client(fake(script).url, "--room", "lobby")
    ann.expect("<bob> done")
    assert ann.finish() == 0
    shown = "\n".join(ann.lines)
    for raw in nasty.values():
        if raw != "\n":
            assert raw not in shown, f"{raw!r} reached the terminal"
    visible = "\\x1b[2J\\u202e\\u2066\\u200e\\u200b\\u200d\\u2060\\ufeff\\x9b\\x07"
    for prefix in ("m", "p", "o", "n", "f", "d", "r", "e", "w", "v"):
        assert f"{prefix}{visible}\\n" in shown, prefix  # a newline outside text is shown as \n
    assert f"t{visible}\n    " in shown and f"x{visible}\n    " in shown  # in text it starts an indented line


def test_sigint_sends_close_1000_before_exiting(fake, client):
    """Ctrl-C (SIGINT) with a pipe: a close frame with code 1000 goes out, then exit 130."""
    def script(conn, received):
        conn.send(joined(expect_request(received, "join")))
        expect_request(received, None, timeout=30)

    server = fake(script)
    ann = client(server.url, "--room", "lobby")
    ann.expect("you joined lobby")
    ann.proc.send_signal(signal.SIGINT)
    assert ann.wait() == 130
    assert server.wait_closed() == [1000]
    assert ann.stderr() == ""


@pytest.mark.parametrize(("code", "says"), [(4001, "your token expired"), (4002, "replaced by a new connection")])
def test_a_final_close_code_ends_the_client_without_reconnecting(fake, client, code, says):
    """Close 4001 (token expired) or 4002 (replaced): PROTOCOL.md says not to reconnect by
    itself; the client says why in one line and exits 1 (a pipe), with no second connection."""
    def script(conn, received):
        conn.send(joined(expect_request(received, "join")))
        conn.close(code, "bye")

    server = fake(script)
    ann = client(server.url, "--room", "lobby")
    ann.expect("you joined lobby")
    assert ann.wait() == 1
    assert any(says in line and f"({code})" in line and "Not reconnecting" in line for line in ann.lines), ann.lines
    assert server.connections == 1
    assert f"the connection: {says}" in ann.stderr()
