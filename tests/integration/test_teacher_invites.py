"""Class invites over real sockets: `?invite=` upgrades, a nick per person redeeming one use and
reserved for it, 401 once used up or expired, the invite's rooms and op claims, uses counted by
the engine (memory, SQLite across a restart, Redis), and `python roomchat.py invite`."""

import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from chatserver.rooms.invites import issue_invite
from tests.helpers import ROOMCHAT, SECRET, roomchat_env, token, upgrade, with_token

pytestmark = pytest.mark.timeout(30)


def invite(uses: int = 2, ttl: float = 3600, rooms=("class",), op: bool = False, now=None) -> str:
    return issue_invite(SECRET.encode(), None if rooms is None else list(rooms), uses, ttl, op, now=now)


def invited(url: str, signed: str) -> str:
    return f"{url}?invite={signed}"


def redeem(peer, nick: str) -> dict:
    """Pick `nick` on an invite connection: the `nick` reply, then the `auth` reply with its token."""
    peer.send(type="nick", nick=nick, id=1)
    assert peer.recv() == {"type": "nick", "old": peer.nick, "nick": nick, "id": 1}
    peer.nick = nick
    auth = peer.recv()
    assert (auth["type"], auth["id"], auth["nick"]) == ("auth", 1, nick), auth
    return auth


@pytest.fixture(params=["memory", "sqlite"])
def server(request, make_server, tmp_path):
    db = ":memory:" if request.param == "memory" else str(tmp_path / "h.db")
    return make_server(db=db, token_secret=SECRET)


def test_each_person_picks_a_nick_then_the_used_up_invite_gets_401(server, peers, raw_clients):
    """An invite for 2: two people connect with it and pick nicks (each gets a token for its nick);
    a third upgrade gets 401 saying in words that it is used up."""
    signed = invite(uses=2)
    first, second = peers(invited(server.url, signed)), peers(invited(server.url, signed))
    assert first.nick.startswith("guest-")
    auth = redeem(first, "stud1")
    assert auth["rooms"] == ["class"] and auth["op"] is False and isinstance(auth["token"], str)
    redeem(second, "stud2")
    status, headers, body = upgrade(raw_clients, server.port, "/?invite=" + signed)
    assert status == 401 and headers["content-type"].startswith("text/plain")
    assert b"used by all 2 people" in body


def test_a_connection_not_yet_redeemed_is_refused_a_nick_once_the_invite_is_used_up(server, peers):
    """Two connected with an invite for one: the first to pick a nick takes the use; the other's nick
    is forbidden, and it stays a guest."""
    signed = invite(uses=1)
    first, late = peers(invited(server.url, signed)), peers(invited(server.url, signed))
    redeem(first, "stud1")
    refused = late.request(type="nick", nick="stud2", id=3)
    assert (refused["code"], refused["id"]) == ("forbidden", 3) and "used by all 1 people" in refused["message"]
    assert late.request(type="ping") == {"type": "pong"}


def test_an_expired_invite_gets_401(server, raw_clients):
    """An invite past its expiry: the upgrade gets 401 saying it expired."""
    status, _, body = upgrade(raw_clients, server.port, "/?invite=" + invite(ttl=10, now=time.time() - 100))
    assert status == 401 and b"expired" in body


@pytest.mark.parametrize("signed, says", [
    ("garbage", b"not valid"),
    (token("ann"), b"not valid"),  # an identity token is not an invite
])
def test_a_bad_invite_gets_401(server, raw_clients, signed, says):
    """A malformed invite, or an identity token given as one: 401 with the reason."""
    status, _, body = upgrade(raw_clients, server.port, "/?invite=" + signed)
    assert status == 401 and says in body


def test_the_nick_is_reserved_and_the_token_brings_it_back(server, peers):
    """The picked nick is reserved like a token's: nobody else takes it, even after its holder left;
    the token from the `auth` reply reconnects as that nick without using the invite again."""
    signed = invite(uses=1)
    student = peers(invited(server.url, signed))
    personal = redeem(student, "sam")["token"]
    assert student.request(type="nick", nick="sam2")["code"] == "forbidden"  # the nick is now the token's
    other = peers(server.url)
    assert other.request(type="nick", nick="SAM")["code"] == "nick_reserved"
    student.close()
    assert other.request(type="nick", nick="sam")["code"] == "nick_reserved"
    back = peers(with_token(server.url, personal))
    assert back.nick == "sam" and back.welcome["auth"]["rooms"] == ["class"]


def test_the_invites_rooms_and_op_claims_apply(server, peers):
    """Before and after picking a nick, an invite connection may join only the invite's rooms; an op
    invite makes each person an operator there (once it has a nick); a plain one does not."""
    teacher = peers(invited(server.url, invite(uses=1, rooms=("class", "lobby"), op=True)))
    assert teacher.request(type="join", room="elsewhere")["code"] == "forbidden"
    assert teacher.join("class")["room"] == "class"
    assert redeem(teacher, "teacher")["op"] is True
    teacher.send(type="topic", room="class", topic="Exam on Friday", id="t")
    assert teacher.recv_type("topic")["by"] == "teacher"
    student = peers(invited(server.url, invite(uses=1)))
    redeem(student, "stud1")
    assert student.request(type="join", room="lobby")["code"] == "forbidden"
    assert student.request(type="topic", room="class", topic="mine")["code"] == "forbidden"


def test_uses_survive_a_restart_with_sqlite(make_server, peers, raw_clients, tmp_path):
    """The SQLite engine keeps the count in the history file: after a restart the used-up invite still
    gets 401, and the one with a use left still works."""
    db = str(tmp_path / "h.db")
    first = make_server(db=db, token_secret=SECRET)
    full, spare = invite(uses=1), invite(uses=2)
    redeem(peers(invited(first.url, full)), "stud1")
    redeem(peers(invited(first.url, spare)), "stud2")
    port = first.port
    first.shutdown(timeout=0.5)
    again = make_server(db=db, token_secret=SECRET, port=port)
    assert upgrade(raw_clients, again.port, "/?invite=" + full)[0] == 401
    redeem(peers(invited(again.url, spare)), "stud3")
    assert upgrade(raw_clients, again.port, "/?invite=" + spare)[0] == 401


def test_uses_are_counted_in_redis_across_processes(cluster, peers, raw_clients):
    """Two processes on one Redis share an invite's count: one use on each, and the third upgrade, on
    either, gets 401."""
    a, b = cluster(2, "--token-secret", SECRET)
    signed = invite(uses=2)
    redeem(peers(invited(a.url, signed)), "stud1")
    redeem(peers(invited(b.url, signed)), "stud2")
    for process in (a, b):
        assert upgrade(raw_clients, process.port, "/?invite=" + signed)[0] == 401


def test_an_invite_is_let_in_where_a_token_is_required(make_server, peers, raw_clients):
    """With --require-token an upgrade with a usable invite connects (and redeems it); one without gets 401."""
    strict = make_server(token_secret=SECRET, require_token=True)
    redeem(peers(invited(strict.url, invite(uses=1))), "stud1")
    assert upgrade(raw_clients, strict.port, "/")[0] == 401


def test_the_invite_command_prints_a_page_link_for_the_servers_address(tmp_path):
    """`roomchat.py invite` prints http://HOST:PORT/?invite=<token>#<first room>, HOST and PORT from the
    same options and variables as the server; the token's claims are the options'."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    env = roomchat_env(ROOMCHAT_PORT="9123", ROOMCHAT_TOKEN_SECRET_FILE=str(secret))
    done = subprocess.run([*ROOMCHAT, "invite", "--rooms", "class,lobby", "--uses", "40", "--ttl", "8h", "--op",
                           "--host", "10.0.0.5"], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    link = urlsplit(done.stdout.strip())
    assert (link.scheme, link.netloc, link.path, link.fragment) == ("http", "10.0.0.5:9123", "/", "class")
    from chatserver.rooms.invites import verify_invite

    claims = verify_invite(SECRET.encode(), parse_qs(link.query)["invite"][0])
    assert (claims.uses, claims.rooms, claims.op) == (40, frozenset({"class", "lobby"}), True)
    assert 8 * 3600 - 60 < claims.expires - time.time() <= 8 * 3600
    bad = subprocess.run([*ROOMCHAT, "invite", "--uses", "0"], env=env, capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--uses must be from 1" in bad.stderr
