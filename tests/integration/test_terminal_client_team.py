"""`python roomchat.py client` through a pipe against a real server, on a team's features: /edit,
/delete, /react, /search and /mark, the lines others' edits, reactions and typing make, read
marks on another device and DMs that wait; on SQLite and on Redis alike. (A refusal of /search by
a server that cannot search, `unsupported`: tests/unit/test_terminal_client_team.py.)"""

import pytest

from tests.client_helpers import ClientProcess
from tests.helpers import SECRET, closing_all, token, with_token


@pytest.fixture
def client():
    """client(url, *args) -> ClientProcess; any still running is killed at teardown."""
    yield from closing_all(ClientProcess, close=ClientProcess.kill)


@pytest.fixture(params=["sqlite", "redis"])
def team_url(request, make_server, tmp_path):
    """The address of a server with a token secret: SQLite (a file), or one process on a Redis
    of this test's own."""
    if request.param == "sqlite":
        return make_server(db=str(tmp_path / "team.db"), token_secret=SECRET).url
    redis_server = request.getfixturevalue("redis_server")
    process = request.getfixturevalue("spawn")("--redis", redis_server.url, "--token-secret", SECRET)
    return process.url


def pair(client, url: str, room: str = "lobby"):
    ann = client(url, "--nick", "ann", "--room", room)
    ann.expect(f"you joined {room}: 1 member: ann")
    bob = client(url, "--nick", "bob", "--room", room)
    bob.expect(f"you joined {room}: 2 members: ann, bob")
    ann.expect(f"[{room}] * bob joined")
    return ann, bob


def test_edit_react_delete_and_search_from_the_terminal(team_url, client, peers):
    """ann's chat shows its #seq; /edit, /react and /delete reach both clients as one line each
    naming #seq; bob's /edit of ann's chat is refused in one line; /search lists the edited chat
    with its reaction (SQLite and Redis); /mark is confirmed; another member's typing is one line."""
    ann, bob = pair(client, team_url)
    ann.type("helo team")
    seq = int(bob.expect("<ann> helo team").split("#", 1)[1].split(" ", 1)[0])
    ann.type(f"/edit {seq} hello team")
    for side in (ann, bob):
        side.expect(f"[lobby] * ann edited #{seq}: hello team")
    bob.type(f"/react {seq} 👍")
    for side in (ann, bob):
        side.expect(f"[lobby] * bob reacted 👍 to #{seq}")
    bob.type(f"/edit {seq} mine now")
    assert bob.expect(f"edit of #{seq} in lobby refused: ").split(" ", 1)[1].startswith("! ")
    ann.type("/search HEL")
    ann.expect("1 message in lobby match 'HEL', newest first:")
    ann.expect(f"[lobby] #{seq} <ann> hello team (edited)  [👍 bob]")
    typist = peers(team_url)
    typist.join("lobby")
    typist.send(type="typing", room="lobby")
    ann.expect(f"[lobby] * {typist.nick} is typing…")
    ann.type(f"/delete {seq}")
    for side in (ann, bob):
        side.expect(f"[lobby] * ann deleted #{seq}")
    ann.type("/mark")
    ann.expect("* lobby marked read up to #")
    bob.type("/quit")
    assert bob.finish() == 1  # its refused /edit makes the pipe's status 1


def test_marks_and_waiting_dms_follow_a_token_to_another_device(team_url, client, peers):
    """ann (a token) marks lobby read and leaves; bob chats twice and DMs her; ann's next client
    says 2 unread since her mark and prints the DM that waited, as sent while she was away."""
    ann_url = with_token(team_url, token("ann"))
    first = client(ann_url, "--room", "lobby")
    first.expect("you joined lobby: 1 member: ann")
    bob = peers(team_url)
    bob.join("lobby")
    seen = bob.request(type="chat", room="lobby", text="before you left")["seq"]
    first.expect(f"#{seen} <{bob.nick}> before you left")
    first.type("/mark")
    first.expect(f"* lobby marked read up to #{seen}")
    first.type("/quit")
    assert first.finish() == 0
    bob.recv_type("presence")
    for text in ("while you were out", "and this"):
        bob.request(type="chat", room="lobby", text=text)
    copy = bob.request(type="dm", to="ann", text="call me")
    assert copy.get("stored") is True, copy
    again = client(ann_url, "--room", "lobby")
    again.expect("[dm] <" + bob.nick + "> -> ann: call me  (sent ")
    again.expect(f"* 2 unread in lobby since you last read (#{seen}); /mark when read")
    again.type("/quit")
    assert again.finish() == 0
