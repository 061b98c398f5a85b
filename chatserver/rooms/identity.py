"""Identity: signed tokens (JWT, RFC 7519, HS256 with PyJWT), reserved nicks, and token expiry.

A token names its holder and what it may do. Claims: `sub` (the nick, required), `exp` (Unix
time it stops being valid, required: a token without one would reserve its nick for ever),
`rooms` (optional list: the only rooms it may join), `op` (optional boolean: an operator, who
may set topics, kick, ban and mute). A client gives it in the WebSocket URL (`?token=...`) or in
an `auth` message (PROTOCOL.md, Identity).

`Identities` is what the server knows: the key, the configured reserved nicks, and one thread
(`roomchat-expiry`) that closes a connection with 4001 when its token expires. Its `_cond`
guards `_heap` and `_armed`; the callback runs with no lock held.
"""

import heapq
import itertools
import threading
import time
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import jwt

from chatserver.errors import ChatError
from chatserver.protocol import NICK_RE, ROOM_RE, fold_nick

# what `token` and `invite` say when given no secret
NO_SECRET = ("no secret: give --token-secret-file FILE (or ROOMCHAT_TOKEN_SECRET_FILE), the file the server is "
             "started with (docs/identity.md makes one)")
ALGORITHM = "HS256"  # RFC 7518 3.2; the only algorithm accepted, so "none" and key confusion are out
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Identity(NamedTuple):
    """A verified token: `nick` (its `sub`), `rooms` (frozenset, or None for any room), `op`,
    `expires` (Unix time, seconds)."""

    nick: str
    rooms: frozenset | None
    op: bool
    expires: float

    def may_enter(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms

    def summary(self) -> dict:
        """What `welcome.auth` and the `auth` reply tell the client about its token."""
        out = {"nick": self.nick, "op": self.op, "exp": int(self.expires)}
        if self.rooms is not None:
            out["rooms"] = sorted(self.rooms)
        return out


def issue(key: bytes, nick: str, ttl: float, rooms=None, op: bool = False, now: float | None = None) -> str:
    """A signed token for `nick`, valid for `ttl` seconds. Raises ValueError for a bad nick or room."""
    if not NICK_RE.fullmatch(nick):
        raise ValueError(f"{nick!r} is not a nick: 1-32 letters, digits, '_', '-' or '.'")
    return sign(key, {"sub": nick}, ttl, rooms, op, now)


def sign(key: bytes, claims: dict, ttl: float, rooms=None, op: bool = False, now: float | None = None) -> str:
    """`claims` plus `exp` (`ttl` seconds from now), `rooms` and `op`, signed (tokens and invites
    alike). Raises ValueError for a bad room."""
    claims = {**claims, "exp": int((time.time() if now is None else now) + ttl)}
    if rooms is not None:
        bad = [room for room in rooms if not ROOM_RE.fullmatch(room)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a room name")
        claims["rooms"] = sorted(set(rooms))
    if op:
        claims["op"] = True
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(key: bytes | None, token: str) -> Identity:
    """Check a token's signature, expiry and claims. Raises ChatError bad_token saying why (never
    quoting the token)."""
    if key is None:
        raise ChatError("bad_token", "This server does not use tokens: it was started without a token secret "
                                     "(ROOMCHAT_TOKEN_SECRET_FILE; docs/identity.md says how to make one).")
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise ChatError("bad_token", "The token has expired; ask for a new one.") from None
    except jwt.InvalidSignatureError:
        raise ChatError("bad_token", "The token's signature is not valid on this server.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise ChatError("bad_token", f"The token has no {exc.claim!r} claim.") from None
    except jwt.InvalidTokenError:
        raise ChatError("bad_token", "The token is malformed or not valid yet.") from None
    sub, rooms, op = claims["sub"], claims.get("rooms"), claims.get("op", False)
    if not isinstance(sub, str) or not NICK_RE.fullmatch(sub):
        raise ChatError("bad_token", "The token's 'sub' is not a nick.")
    if rooms is not None and (not isinstance(rooms, list)
                              or not all(isinstance(r, str) and ROOM_RE.fullmatch(r) for r in rooms)):
        raise ChatError("bad_token", "The token's 'rooms' is not a list of room names.")
    if not isinstance(op, bool):
        raise ChatError("bad_token", "The token's 'op' is not true or false.")
    return Identity(sub, None if rooms is None else frozenset(rooms), op, float(claims["exp"]))


def token_in(target: str) -> str | None:
    """The `token` query parameter of a request target ("/?token=..."), or None.
    Raises ChatError bad_token when there are several."""
    try:
        values = parse_qs(urlsplit(target).query).get("token", [])
    except ValueError:
        return None
    if len(values) > 1:
        raise ChatError("bad_token", "Give one token, not several.")
    return values[0] if values else None


def parse_ttl(text: str) -> float:
    """"90", "90s", "15m", "1h", "7d" -> seconds. Raises ValueError."""
    given, text = text, text.strip().lower()
    factor = TTL_UNITS.get(text[-1:])
    try:
        number = float(text[:-1] if factor else text)
    except ValueError:
        raise ValueError(f"--ttl {given!r} is not a time: give seconds, or a number with s, m, h or d "
                         "(90, 10m, 8h, 30d)") from None
    if not 0 < number < 1e9:
        raise ValueError("a ttl must be more than 0 and less than 1e9")
    return number * (factor or 1)


class Identities:
    """Tokens and reserved nicks for one server. `watch` arms a connection's expiry;
    `on_expiry(client)` runs on the `roomchat-expiry` thread when it is due."""

    def __init__(self, key: bytes | None, reserved=(), require: bool = False, on_expiry=None, clock=time.time):
        self._key = key
        self.require = require
        self._reserved = {fold_nick(nick) for nick in reserved}
        self._on_expiry = on_expiry
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list = []  # (expires, tie-breaker, client)
        self._armed: dict = {}  # client -> the expiry it is armed for; older heap entries are stale
        self._ties = itertools.count()
        self._thread = None
        self._stopped = False

    def verify(self, token: str) -> Identity:
        """Raises ChatError bad_token."""
        return verify(self._key, token)

    def refusal(self, target: str) -> tuple | None:
        """For a WebSocket upgrade to `target`: None to accept, or (401, reason, headers) with a
        Bearer challenge (RFC 6750 3: error="invalid_token" for a bad token, "invalid_request" for
        several). A token in the URL must be valid; with `require`, one must be there."""
        challenge, error = 'Bearer realm="roomchat"', "invalid_request"
        try:
            token = token_in(target)
            if token is None:
                if not self.require:
                    return None
                error = None
                raise ChatError("bad_token", "This server requires a token: connect to /?token=<your token>.")
            error = "invalid_token"
            self.verify(token)
            return None
        except ChatError as exc:
            challenge += f', error="{error}"' if error else ""
            return 401, exc.message, {"WWW-Authenticate": challenge}

    def identity_in(self, target: str) -> Identity | None:
        """The verified identity in a request target that `refusal` accepted, or None.
        Raises ChatError bad_token (it may have expired since)."""
        token = token_in(target)
        return None if token is None else self.verify(token)

    def is_reserved(self, nick: str) -> bool:
        """True for a nick (or one that looks like it) on the configured reserved list."""
        return fold_nick(nick) in self._reserved

    # -- expiry ----------------------------------------------------------------------------------

    def watch(self, client, expires: float) -> None:
        """Call `on_expiry(client)` at `expires` (Unix time) unless re-armed or forgotten first."""
        with self._cond:
            if self._stopped:
                return
            self._armed[client] = expires
            heapq.heappush(self._heap, (expires, next(self._ties), client))
            self._compact()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="roomchat-expiry", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, client) -> None:
        with self._cond:
            self._armed.pop(client, None)
            self._compact()

    def _compact(self) -> None:
        """Drop stale heap entries (forgotten or re-armed clients) once they outnumber the live
        ones, so a gone client is not kept until its token's expiry. Lock held."""
        if len(self._heap) > 2 * len(self._armed) + 64:
            self._heap = [(expires, next(self._ties), client) for client, expires in self._armed.items()]
            heapq.heapify(self._heap)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0][0] <= self._clock():
                        expires, _, client = heapq.heappop(self._heap)
                        if self._armed.get(client) == expires:
                            del self._armed[client]
                            break
                        continue
                    self._cond.wait(min(1.0, self._heap[0][0] - self._clock()) if self._heap else None)
                if self._stopped:
                    return
            self._on_expiry(client)


def token_main(argv, environ=None) -> int:
    """`python roomchat.py token --nick ann [--rooms lobby,class] [--ttl 8h] [--op]`: print a token
    signed with the server's secret (--token-secret / --token-secret-file / their variables, read
    from `environ`, os.environ by default)."""
    import argparse
    import os

    environ = os.environ if environ is None else environ

    from chatserver.config import Config, env_name

    parser = argparse.ArgumentParser(prog="roomchat.py token", description="Print a signed identity token.")
    parser.add_argument("--nick", required=True, help="the holder's nick (the token's sub)")
    parser.add_argument("--rooms", action="append", help="rooms it may join, comma-separated or repeated "
                        "(default: any room)")
    parser.add_argument("--ttl", default="8h", help="how long it is valid: 90s, 15m, 1h, 7d (default 8h)")
    parser.add_argument("--op", action="store_true", help="an operator: may set topics, kick, ban and mute")
    for name in ("token_secret", "token_secret_file"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, metavar=name.upper(),
                            help=f"as for the server [{env_name(name)}]")
    args = parser.parse_args(argv)
    config = Config(**{name: getattr(args, name) or environ.get(env_name(name), "")
                       for name in ("token_secret", "token_secret_file")})
    problem = config.problem()
    if problem is None and config.token_key() is None:
        problem = NO_SECRET
    try:
        if problem:
            raise ValueError(problem)
        rooms = None if args.rooms is None else [r.strip() for arg in args.rooms for r in arg.split(",") if r.strip()]
        print(issue(config.token_key(), args.nick, parse_ttl(args.ttl), rooms, args.op))
    except ValueError as exc:
        parser.error(str(exc))
    return 0
