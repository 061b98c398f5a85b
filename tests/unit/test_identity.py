"""Identity's pure parts: nick folding, tokens, the handshake decision, the expiry thread, the
secret settings and the moderation helpers. No sockets."""

import threading
import time

import jwt
import pytest

from chatserver.config import Config, from_args
from chatserver.engines.memory import MemoryEngine
from chatserver.errors import ChatError
from chatserver.protocol import fold_nick
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.identity import Identities, Identity, issue, parse_ttl, token_in, verify
from chatserver.rooms.moderation import for_how_long, removes_member
from chatserver.rooms.registry import Registry
from tests.helpers import SECRET, FakeConn

KEY = SECRET.encode()


@pytest.mark.parametrize("a, b", [
    ("bill", "BILL"), ("bill", "Bi11"), ("bill", "biIl"), ("Ian", "lan"), ("l1l", "III"),
    ("bob", "B0B"), ("moe", "rnoe"), ("MOE", "RNOE"), ("warm", "warrn"), ("o0O", "ooo"),
])
def test_look_alikes_fold_together(a, b):
    """Nicks that differ by case, I/l/1, O/0 or rn/m have one fold."""
    assert fold_nick(a) == fold_nick(b)


@pytest.mark.parametrize("a, b", [("bill", "bell"), ("ann", "anne"), ("bob", "bop"), ("rn", "n"), ("mo", "no")])
def test_different_nicks_fold_apart(a, b):
    """Nicks that do not look alike keep different folds."""
    assert fold_nick(a) != fold_nick(b)


def test_fold_is_idempotent():
    """Folding a fold changes nothing, so a folded key can be folded again safely."""
    for nick in ("Rn1O", "guest-10", "bill", "MoRnInG"):
        assert fold_nick(fold_nick(nick)) == fold_nick(nick)


def test_valid_token_gives_its_claims():
    """A token from issue() verifies to its nick, rooms, op flag and expiry."""
    now = time.time()
    identity = verify(KEY, issue(KEY, "ann", 60, rooms=["lobby", "class"], op=True, now=now))
    assert identity == Identity("ann", frozenset({"lobby", "class"}), True, float(int(now + 60)))
    assert identity.may_enter("lobby") and not identity.may_enter("other")
    assert identity.summary() == {"nick": "ann", "op": True, "exp": int(now + 60), "rooms": ["class", "lobby"]}


def test_token_without_claims_may_enter_any_room_and_is_no_operator():
    """Without `rooms` and `op` a token may join any room and is not an operator."""
    identity = verify(KEY, issue(KEY, "bob", 60))
    assert identity.rooms is None and identity.op is False and identity.may_enter("anything")


@pytest.mark.parametrize("make, says", [
    (lambda: issue(KEY, "ann", -5), "expired"),
    (lambda: issue(b"another-secret-" + b"x" * 32, "ann", 60), "signature"),
    (lambda: jwt.encode({"sub": "ann"}, KEY, algorithm="HS256"), "'exp'"),
    (lambda: jwt.encode({"exp": time.time() + 60}, KEY, algorithm="HS256"), "'sub'"),
    (lambda: jwt.encode({"sub": "a b", "exp": time.time() + 60}, KEY, algorithm="HS256"), "not a nick"),
    (lambda: jwt.encode({"sub": "ann", "exp": time.time() + 60, "rooms": "lobby"}, KEY, algorithm="HS256"), "rooms"),
    (lambda: jwt.encode({"sub": "ann", "exp": time.time() + 60, "op": "yes"}, KEY, algorithm="HS256"), "'op'"),
    (lambda: jwt.encode({"sub": "ann", "exp": time.time() + 60}, KEY * 2, algorithm="HS512"), "malformed"),
    (lambda: jwt.encode({"sub": "ann", "exp": time.time() + 60}, None, algorithm="none"), "malformed"),
    (lambda: "not.a.token", "malformed"),
])
def test_bad_tokens_are_refused_with_the_reason(make, says):
    """Expired, wrongly signed, claim-less, ill-typed, other-algorithm and unsigned tokens: bad_token, saying why."""
    with pytest.raises(ChatError) as info:
        verify(KEY, make())
    assert info.value.code == "bad_token" and says in info.value.message


def test_no_key_means_no_tokens():
    """A server without a secret refuses every token."""
    with pytest.raises(ChatError) as info:
        verify(None, issue(KEY, "ann", 60))
    assert "without a token secret" in info.value.message


def test_token_in_request_target():
    """The token is the `token` query parameter; none gives None, two are refused."""
    assert token_in("/?token=abc.def.ghi") == "abc.def.ghi"
    assert token_in("/chat?x=1&token=t") == "t"
    assert token_in("/") is None and token_in("/?tok=1") is None
    with pytest.raises(ChatError):
        token_in("/?token=a&token=b")


def test_handshake_refusals():
    """401 with a Bearer challenge for a bad token, or for none when tokens are required; None to accept."""
    open_server, strict = Identities(KEY), Identities(KEY, require=True)
    good = issue(KEY, "ann", 60)
    assert open_server.refusal("/") is None and open_server.refusal(f"/?token={good}") is None
    assert strict.refusal(f"/?token={good}") is None
    status, reason, headers = strict.refusal("/")
    assert (status, headers) == (401, {"WWW-Authenticate": 'Bearer realm="roomchat"'}) and "requires a token" in reason
    status, reason, headers = open_server.refusal("/?token=" + issue(KEY, "ann", -1))
    assert status == 401 and "expired" in reason and 'error="invalid_token"' in headers["WWW-Authenticate"]


def test_reserved_list_matches_look_alikes():
    """A nick on the reserved list is reserved in any case or look-alike spelling."""
    identities = Identities(None, ["admin", "root"])
    assert identities.is_reserved("ADM1N") and identities.is_reserved("R00T") and not identities.is_reserved("ann")


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800),
                                           ("1.5h", 5400)])
def test_parse_ttl(text, seconds):
    """A ttl is seconds, or a number with s, m, h or d."""
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "0", "-1m", "1w", "inf", "nan"])
def test_parse_ttl_refuses_nonsense(text):
    """Empty, zero, negative, unknown units and non-finite ttls are refused."""
    with pytest.raises(ValueError):
        parse_ttl(text)


def test_a_ttl_that_is_no_number_says_what_a_ttl_looks_like():
    """"30days" is refused naming itself and the forms a ttl takes."""
    with pytest.raises(ValueError, match=r"'30days' is not a time.*\(90, 10m, 8h, 30d\)"):
        parse_ttl("30days")


class Recorder:
    """Collects what the expiry thread closes, with a condition to wait on."""

    def __init__(self):
        self.expired = []
        self.cond = threading.Condition()

    def __call__(self, client):
        with self.cond:
            self.expired.append(client)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5) -> list:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.expired) >= n, timeout), self.expired
            return list(self.expired)


def test_expiry_thread_closes_in_order_and_honours_renewal_and_forget():
    """Due connections come in expiry order; a re-armed one at its new time, a forgotten one never."""
    recorder = Recorder()
    identities = Identities(KEY, on_expiry=recorder)
    now = time.time()
    identities.watch("late", now + 0.4)
    identities.watch("early", now + 0.1)
    identities.watch("renewed", now + 0.2)
    identities.watch("renewed", now + 0.6)
    identities.watch("gone", now + 0.3)
    identities.forget("gone")
    try:
        assert recorder.wait(3) == ["early", "late", "renewed"]
        time.sleep(0.2)
        assert recorder.expired == ["early", "late", "renewed"]
    finally:
        identities.stop()


def test_secret_settings():
    """The secret: from the option, the variable or a file (without its final newline); too short, both
    at once, an unreadable file or --require-token without one exit with a usage error."""
    assert from_args(["--token-secret", SECRET], environ={}).token_key() == KEY
    assert from_args([], environ={"ROOMCHAT_TOKEN_SECRET": SECRET}).token_key() == KEY
    assert Config().token_key() is None
    assert from_args(["--require-token"], environ={"ROOMCHAT_TOKEN_SECRET": SECRET}).require_token is True
    assert from_args([], environ={"ROOMCHAT_REQUIRE_TOKEN": "no"}).require_token is False
    for argv, env in ((["--token-secret", "short"], {}), (["--require-token"], {}),
                      (["--token-secret", SECRET, "--token-secret-file", "/etc/hostname"], {}),
                      (["--token-secret-file", "/nonexistent/secret"], {}),
                      ([], {"ROOMCHAT_REQUIRE_TOKEN": "maybe"}), (["--reserved-nicks", "admin,a b"], {})):
        with pytest.raises(SystemExit):
            from_args(argv, environ=env)


def test_secret_file_without_final_newline(tmp_path):
    """A secret file written with echo (a final newline) gives the secret without it."""
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert from_args(["--token-secret-file", str(path)], environ={}).token_key() == KEY


def test_secret_stays_out_of_the_settings_repr():
    """The secret never shows in Config's repr (so not in a log line that prints the settings)."""
    assert SECRET not in repr(Config(token_secret=SECRET))


def test_moderation_helpers():
    """A kick and a ban that is not a lift take their target out; remaining times read as people say them."""
    assert removes_member({"type": "kick"}) and removes_member({"type": "ban", "duration": 5})
    assert not removes_member({"type": "ban", "duration": 0}) and not removes_member({"type": "mute", "duration": 5})
    assert for_how_long(40.2) == "for 41 more seconds"
    assert for_how_long(600) == "for 10 more minutes"
    assert for_how_long(3 * 3600) == "for 3 more hours"
    assert for_how_long(2 * 86400 + 1) == "for 3 more days"


def test_guest_nicks_skip_reserved_ones():
    """A guest nick on the reserved list, or reserved by a token, is not handed out."""
    engine = MemoryEngine()
    engine.reserve_nick("guest-2", time.time() + 60)
    registry = Registry(engine, Config().limits(), Identities(None, ["guest-1"]))
    assert registry.connect(FakeConn(), TokenBucket(20, 5)).nick == "guest-3"


def test_expiry_watch_keeps_no_gone_client():
    """Clients forgotten (disconnected) or re-armed (a renewed token) do not stay referenced until
    their token's expiry: the expiry heap stays near the number of live clients."""
    identities = Identities(None, on_expiry=lambda client: None)
    try:
        live = object()
        identities.watch(live, time.time() + 3600)
        for _ in range(2000):
            gone = object()
            identities.watch(gone, time.time() + 30 * 86400)
            identities.forget(gone)
            identities.watch(live, time.time() + 3600)  # renewed
        assert len(identities._heap) <= 2 * len(identities._armed) + 65
    finally:
        identities.stop()
