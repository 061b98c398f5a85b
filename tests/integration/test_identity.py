"""Identity over real sockets: tokens at the handshake and in `auth`, expiry (4001), reserved and
look-alike nicks, a holder taking its nick back, --require-token (401), and the token command."""

import subprocess
import time
import urllib.request

import pytest

from tests.helpers import ROOMCHAT, SECRET, roomchat_env, run_to_exit, token, upgrade, wait_for, with_token

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server(make_server):
    """A server with a token secret (tokens optional)."""
    return make_server(token_secret=SECRET)


def test_a_token_in_the_url_gives_its_nick_and_claims(server, peers):
    """?token= with a valid token: welcome has the token's nick and an `auth` summary of its claims."""
    peer = peers(with_token(server.url, token("ann", rooms=["lobby"], op=True)))
    assert peer.welcome["nick"] == "ann"
    auth = peer.welcome["auth"]
    assert (auth["nick"], auth["op"], auth["rooms"]) == ("ann", True, ["lobby"])
    assert auth["exp"] > time.time()


@pytest.mark.parametrize("case, says", [
    ("expired", "expired"), ("wrong signature", "signature"), ("garbage", "malformed"), ("two tokens", "one token"),
])
def test_bad_token_in_the_url_is_refused_with_401(server, raw_clients, case, says):
    """An expired, wrongly signed or malformed token (or two) at the handshake: 401 with a Bearer
    challenge and the reason, and no WebSocket."""
    signed = {"expired": token("ann", ttl=-10), "wrong signature": token("ann", secret="another-" + "x" * 32),
              "garbage": "abc", "two tokens": token("ann") + "&token=" + token("ann")}[case]
    status, headers, body = upgrade(raw_clients, server.port, "/?token=" + signed)
    error = "invalid_request" if case == "two tokens" else "invalid_token"
    assert status == 401 and headers["www-authenticate"] == f'Bearer realm="roomchat", error="{error}"'
    assert says in body.decode()


def test_a_server_without_a_secret_refuses_tokens(make_server, raw_clients, peers):
    """Without a secret a token in the URL is refused (401), while anonymous clients connect as before."""
    plain = make_server()
    status, _, body = upgrade(raw_clients, plain.port, "/?token=" + token("ann"))
    assert status == 401 and b"without a token secret" in body and b"ROOMCHAT_TOKEN_SECRET_FILE" in body
    assert peers(plain.url).nick.startswith("guest-")


def test_require_token_refuses_anonymous_upgrades_only(make_server, raw_clients, peers):
    """--require-token: an upgrade without a token gets 401; with a valid one it connects; plain HTTP still works."""
    strict = make_server(token_secret=SECRET, require_token=True)
    status, headers, body = upgrade(raw_clients, strict.port, "/")
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="roomchat"'
    assert b"requires a token" in body
    assert peers(with_token(strict.url, token("ann"))).nick == "ann"
    with urllib.request.urlopen(f"http://127.0.0.1:{strict.port}/healthz", timeout=5) as response:
        assert response.status == 200


def test_a_token_expiring_while_connected_closes_4001(server, peers):
    """A connection outliving its token is closed with 4001 and a reason when the token expires."""
    peer = peers(with_token(server.url, token("ann", ttl=2)))
    started = time.monotonic()
    peer.ws.settimeout(10)
    code, reason = peer.close_code()
    assert code == 4001 and "expired" in reason
    assert time.monotonic() - started < 8  # at its expiry (2 s), not the next ping (20 s)


def test_auth_renews_a_token_before_it_expires(server, peers):
    """`auth` with a fresh token for the same nick moves the expiry: the connection outlives the first token."""
    peer = peers(with_token(server.url, token("ann", ttl=2)))
    reply = peer.request(type="auth", token=token("ann", ttl=3600), id=1)
    assert reply["type"] == "auth" and reply["id"] == 1 and reply["exp"] > time.time() + 3000
    time.sleep(2.5)  # past the first token's expiry (at most 2 s after it was made)
    assert peer.request(type="ping") == {"type": "pong"}


def test_auth_makes_an_anonymous_connection_the_tokens_holder(server, peers):
    """An anonymous connection sends `auth`: it becomes the token's nick (its rooms see a `nick`
    event), and from then on it may renew only for that nick; a bad token is refused and changes nothing."""
    peer, watcher = peers(server.url), peers(server.url)
    for p in (peer, watcher):
        p.join("lobby")
    peer.recv_type("presence")  # the watcher's join
    assert peer.request(type="auth", token="nonsense")["code"] == "bad_token"
    peer.send(type="auth", token=token("ann", op=True), id="a")
    assert peer.recv() == {"type": "nick", "old": peer.nick, "nick": "ann"}
    reply = peer.recv()
    assert (reply["type"], reply["nick"], reply["op"], reply["id"]) == ("auth", "ann", True, "a")
    assert watcher.recv_type("nick") == {"type": "nick", "old": peer.nick, "nick": "ann"}
    assert peer.request(type="auth", token=token("bob"))["code"] == "forbidden"


def test_a_token_holders_nick_is_its_token(server, peers):
    """A holder cannot take another nick (forbidden) but may change the spelling of its own."""
    peer = peers(with_token(server.url, token("ann")))
    assert peer.request(type="nick", nick="bob")["code"] == "forbidden"
    assert peer.request(type="nick", nick="ANN") == {"type": "nick", "old": "ann", "nick": "ANN"}


def test_rooms_claim_limits_joins(server, peers):
    """A token with `rooms` may join those rooms only; others are forbidden."""
    peer = peers(with_token(server.url, token("ann", rooms=["lobby"])))
    assert peer.join("lobby")["room"] == "lobby"
    reply = peer.request(type="join", room="other", id=3)
    assert (reply["code"], reply["id"]) == ("forbidden", 3)
    assert peer.request(type="who", room="other")["members"] == []


def test_a_tokens_nick_is_reserved_while_its_holder_is_on_and_offline(server, peers):
    """Once a token for bill was seen, nobody else takes bill or a look-alike, also after its holder left."""
    holder = peers(with_token(server.url, token("bill")))
    other = peers(server.url)
    for nick in ("bill", "BILL", "Bi11"):
        assert other.request(type="nick", nick=nick)["code"] == "nick_reserved", nick
    holder.close()
    wait_for(lambda: server.registry.stats()["connections"] == 1)
    assert other.request(type="nick", nick="biIl")["code"] == "nick_reserved"
    assert peers(with_token(server.url, token("bill"))).nick == "bill"


def test_the_holder_takes_its_nick_from_an_anonymous_client(server, peers):
    """An anonymous client that had ann before any token for it was seen is renamed to a guest nick
    when the holder arrives; it and its rooms see the `nick` event."""
    squatter, watcher = peers(server.url), peers(server.url)
    squatter.set_nick("ann")
    for p in (squatter, watcher):
        p.join("lobby")
    squatter.recv_type("presence")  # the watcher's join
    holder = peers(with_token(server.url, token("ann")))
    assert holder.nick == "ann"
    renamed = squatter.recv_type("nick")
    assert renamed["old"] == "ann" and renamed["nick"].startswith("guest-")
    assert watcher.recv_type("nick") == renamed
    assert squatter.request(type="nick", nick="ann")["code"] == "nick_reserved"


def test_a_newer_connection_of_the_same_token_replaces_the_older(server, peers):
    """A second connection with a token for ann closes the first with 4002; its rooms see it leave."""
    first, watcher = peers(with_token(server.url, token("ann"))), peers(server.url)
    first.join("lobby")
    watcher.join("lobby")
    second = peers(with_token(server.url, token("ann")))
    assert second.nick == "ann"
    assert first.close_code()[0] == 4002
    assert watcher.recv_type("presence") == {"type": "presence", "room": "lobby", "event": "leave", "nick": "ann"}


def test_reserved_nicks_are_refused_unless_a_token_names_them(make_server, peers):
    """The default reserved list (admin, root, ...) and its look-alikes give nick_reserved; a token
    for admin gets it; --reserved-nicks replaces the list."""
    default = make_server(token_secret=SECRET)
    peer = peers(default.url)
    for nick in ("admin", "ADM1N", "root", "R00T", "moderator", "server"):
        assert peer.request(type="nick", nick=nick)["code"] == "nick_reserved", nick
    assert peers(with_token(default.url, token("admin"))).nick == "admin"
    custom = make_server(reserved_nicks="teacher")
    other = peers(custom.url)
    assert other.request(type="nick", nick="Teacher")["code"] == "nick_reserved"
    other.set_nick("admin")


def test_a_look_alike_of_a_connected_nick_is_taken(server, peers):
    """With bill connected, Bi11, BILL and biIl are taken; a dm to a look-alike reaches bill."""
    bill, other = peers(server.url), peers(server.url)
    bill.set_nick("bill")
    for nick in ("Bi11", "BILL", "biIl"):
        assert other.request(type="nick", nick=nick)["code"] == "nick_taken", nick
    other.set_nick("bell")
    assert other.request(type="dm", to="B1LL", text="hi")["to"] == "bill"
    assert bill.recv_type("dm")["text"] == "hi"


def test_token_command_prints_a_token_the_server_accepts(spawn, peers, tmp_path):
    """`python roomchat.py token` with the secret in a file prints a token; a server with the same
    file accepts it and shows its claims; neither prints the secret, nor does the server's log."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env = roomchat_env(ROOMCHAT_TOKEN_SECRET_FILE=str(secret_file))
    done = subprocess.run([*ROOMCHAT, "token", "--nick", "ann", "--rooms", "lobby,class", "--ttl", "1h", "--op"],
                          env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and done.stderr == ""
    signed = done.stdout.strip()
    assert SECRET not in done.stdout
    server = spawn("--db", ":memory:", "--log-level", "DEBUG", env=env)
    welcome = peers(with_token(server.url, signed)).welcome
    assert welcome["auth"]["rooms"] == ["class", "lobby"] and welcome["auth"]["op"] is True
    assert welcome["auth"]["exp"] == pytest.approx(time.time() + 3600, abs=5)
    server.stop()
    log = server.stderr_text()
    assert "connect" in log and SECRET not in log and signed not in log


@pytest.mark.parametrize("command", ["token", "invite"])
def test_token_and_invite_without_a_secret_say_where_it_comes_from(command):
    """`token`/`invite` with no secret exit 2 naming ROOMCHAT_TOKEN_SECRET_FILE, the server's file and the docs."""
    args = ["--nick", "ann"] if command == "token" else ["--rooms", "class", "--uses", "40"]
    done = subprocess.run([*ROOMCHAT, command, *args], env=roomchat_env(), capture_output=True, text=True, timeout=10)
    assert done.returncode == 2
    assert "ROOMCHAT_TOKEN_SECRET_FILE" in done.stderr and "the server" in done.stderr
    assert "docs/identity.md" in done.stderr


def test_secret_stays_out_of_help_and_start_up_errors():
    """--help shows no secret set through the variable; a too-short secret exits 2 without printing it."""
    env = roomchat_env(ROOMCHAT_TOKEN_SECRET=SECRET)
    done = run_to_exit("--help", env=env)
    assert done.returncode == 0 and SECRET not in done.stdout
    short = "tiny-secret-value"
    done = run_to_exit("--db", ":memory:", "--token-secret", short)
    assert done.returncode == 2 and "at least 32 bytes" in done.stderr and short not in done.stderr
