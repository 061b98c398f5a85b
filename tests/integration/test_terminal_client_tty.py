"""The terminal client under a pseudo-terminal, its screen read through a terminal emulator (pyte):
the line being typed stays intact while events arrive, and Ctrl-C closes with 1000."""

import json

import pytest

from tests.client_helpers import FakeServer, TtyClient, expect_request
from tests.helpers import closing_all


@pytest.fixture
def tty():
    """tty(url, *args) -> TtyClient; all killed at teardown."""
    yield from closing_all(TtyClient)


def test_incoming_lines_print_above_the_line_being_typed(server, connect, tty):
    """Half a line typed, three messages arrive: they appear above the prompt, each whole, and the
    prompt still holds exactly what was typed, which is then sent as one message."""
    bob = connect()
    bob.set_nick("bob")
    bob.join("lobby")
    ann = tty(server.url, "--nick", "ann", "--room", "lobby")
    ann.wait_for(lambda rows: any("you joined lobby" in row for row in rows), "never joined")
    ann.wait_for(lambda rows: ann.cursor_row() == "[lobby] ann>", "no prompt")
    ann.type("half typ")
    ann.wait_for(lambda rows: ann.cursor_row() == "[lobby] ann> half typ", "typing not echoed")
    for n in (1, 2, 3):
        bob.send(type="chat", room="lobby", text=f"incoming {n}, a line long enough to matter")
    expected = [f"[lobby] #{n} <bob> incoming {n}, a line long enough to matter" for n in (1, 2, 3)]
    prompt = "[lobby] ann> half typ"

    def settled() -> bool:
        """The three lines printed and the prompt redrawn below them (the client prints, then
        redraws: a screen read between the two is not the end state)."""
        rows, y = ann.snapshot()
        shown = [i for i, row in enumerate(rows) if "incoming" in row]
        return ([rows[i].split(" ", 1)[1] for i in shown] == expected
                and rows[y] == prompt and shown[-1] < y)

    ann.wait_for(lambda rows: settled(), "the three lines above the intact prompt never shown")

    ann.type("ed\r")
    event = bob.recv_type("chat")
    while event["from"] != "ann":
        event = bob.recv_type("chat")
    assert event["text"] == "half typed"
    ann.wait_for(lambda rows: any(row.endswith("[lobby] #4 <ann> half typed") for row in rows), "own line not shown")


def test_ctrl_c_at_the_prompt_closes_with_1000(tty):
    """Ctrl-C at the prompt sends a close frame with code 1000, then the client exits 130."""
    def script(conn, received):
        join = expect_request(received, "join")
        conn.send(json.dumps({"type": "joined", "room": "lobby", "members": ["guest-1"], "history": [],
                              "id": join["id"]}))
        expect_request(received, None, timeout=30)

    fake = FakeServer(script)
    try:
        ann = tty(fake.url, "--room", "lobby")
        ann.wait_for(lambda rows: ann.cursor_row() == "[lobby] guest-1>", "no prompt")
        ann.type("not sent")
        ann.type("\x03")
        assert ann.wait_exit() == 130
        assert fake.wait_closed() == [1000]
        assert fake.connections == 1
    finally:
        fake.close()


def test_ctrl_d_on_an_empty_line_quits_once_delivered(server, connect, tty):
    """Ctrl-D on an empty line ends the input: what was sent is confirmed, then the client exits 0."""
    bob = connect()
    bob.join("lobby")
    ann = tty(server.url, "--room", "lobby")
    ann.wait_for(lambda rows: ann.cursor_row().startswith("[lobby] guest-"), "no prompt")
    ann.type("bye\r")
    ann.wait_for(lambda rows: ann.cursor_row().endswith(">") and any("bye" in row for row in rows),
                 "the line was not taken")  # as a person waits for it before the next key
    ann.type("\x04")
    assert ann.wait_exit() == 0
    assert bob.recv_type("chat")["text"] == "bye"
