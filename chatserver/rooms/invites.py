"""Class invites: one signed link for up to N people (PROTOCOL.md, Invites).

`python roomchat.py invite --rooms class,lobby --uses 40 --ttl 8h [--op]` prints
`http://HOST:PORT/?invite=<token>#class`. The token is a JWT signed like identity tokens
(rooms/identity.py: HS256, the server's token secret) with the claims `inv` (the invite's id),
`uses` (how many people it is for), `exp`, and optionally `rooms` and `op`. It has no `sub`, so it
is never taken for an identity token, nor one for it.

A connection opened with `?invite=` is a guest that may join the invite's rooms only. Its first
`nick` request redeems it: the nick is taken as usual (nick_taken, nick_reserved...), then one
use is counted by the engine (`use_invite`: SQLite row, Redis key, memory), and the connection
becomes the holder of an identity token for that nick with the invite's `rooms`, `op` and
expiry: the nick is reserved for that person until the invite expires, and the `auth` reply
carries that token (`token`), for the client to reconnect with (`?token=`) instead of the
invite. An upgrade with an expired invite, or one whose uses are all taken, gets HTTP 401 with
the reason in words. The methods take no lock; each engine call may Raise Unavailable, turned
into `unavailable` (or 503 at the upgrade).
"""

import os
import secrets
import sys
import time
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import jwt

from chatserver.engines.base import Unavailable
from chatserver.errors import ChatError
from chatserver.protocol import ROOM_RE
from chatserver.rooms.identity import ALGORITHM, NO_SECRET, issue, parse_ttl, sign
from chatserver.rooms.registry import unavailable

MAX_USES = 10000  # people one invite may be for


class Invite(NamedTuple):
    """A verified invite: `id`, `rooms` (frozenset, or None for any room), `op`, `uses` (people it
    is for), `expires` (Unix time, seconds)."""

    id: str
    rooms: frozenset | None
    op: bool
    uses: int
    expires: float

    def may_enter(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms


def issue_invite(key: bytes, rooms, uses: int, ttl: float, op: bool = False, now: float | None = None) -> str:
    """A signed invite for `uses` people, valid for `ttl` seconds. Raises ValueError for a bad room or count."""
    if not 1 <= uses <= MAX_USES:
        raise ValueError(f"--uses must be from 1 to {MAX_USES}")
    return sign(key, {"inv": secrets.token_urlsafe(12), "uses": uses}, ttl, rooms, op, now)


def verify_invite(key: bytes | None, token: str) -> Invite:
    """Check an invite's signature, expiry and claims. Raises ChatError bad_token saying why in words."""
    if key is None:
        raise ChatError("bad_token", "This server takes no invites (it has no token secret).")
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["inv", "uses", "exp"]})
    except jwt.ExpiredSignatureError:
        raise ChatError("bad_token", "This invite has expired; ask for a new link.") from None
    except jwt.InvalidTokenError:
        raise ChatError("bad_token", "This invite link is not valid on this server; check that it was "
                                     "copied whole, or ask for a new one.") from None
    uses, rooms, op = claims["uses"], claims.get("rooms"), claims.get("op", False)
    valid_rooms = rooms is None or (isinstance(rooms, list) and all(isinstance(r, str) and ROOM_RE.fullmatch(r)
                                                                     for r in rooms))
    if (not isinstance(claims["inv"], str) or isinstance(uses, bool) or not isinstance(uses, int)
            or not valid_rooms or not isinstance(op, bool)):
        raise ChatError("bad_token", "This invite link is malformed; ask for a new one.")
    return Invite(claims["inv"], None if rooms is None else frozenset(rooms), op, uses, float(claims["exp"]))


def invite_in(target: str) -> str | None:
    """The `invite` query parameter of a request target ("/?invite=..."), or None (also for several)."""
    try:
        values = parse_qs(urlsplit(target).query).get("invite", [])
    except ValueError:
        return None
    return values[0] if len(values) == 1 else None


class Invites:
    """Invites for one server: `key` (the token secret, or None), `engine` (counts uses)."""

    def __init__(self, key: bytes | None, engine, clock=time.time):
        self._key = key
        self._engine = engine
        self._clock = clock

    def refusal(self, target: str) -> tuple | None:
        """For a WebSocket upgrade to `target`: None to accept (no invite, or a usable one), else
        (401, reason) for an invalid, expired or used-up invite, or (503, reason) when the uses
        cannot be read."""
        token = invite_in(target)
        if token is None:
            return None
        try:
            invite = verify_invite(self._key, token)
            if self._engine.invite_uses(invite.id) >= invite.uses:
                return 401, f"This invite has been used by all {invite.uses} people it was for; ask for a new link."
        except ChatError as exc:
            return 401, exc.message
        except Unavailable:
            return 503, "The server cannot check this invite right now; try again shortly."
        return None

    def invite_in(self, target: str) -> Invite | None:
        """The verified invite of a request target that `refusal` accepted, or None. Raises
        ChatError bad_token (it may have expired since)."""
        token = invite_in(target)
        return None if token is None else verify_invite(self._key, token)

    def redeem(self, registry, client, nick: str, reply_id=None) -> None:
        """The first `nick` of a connection opened with an invite: take `nick` as a `nick` request
        does, count a use, and make the connection the holder of a token for `nick` (reserved
        until the invite expires); the `auth` reply carries that token. Raises ChatError
        forbidden (the invite is used up or expired), and what `nick` and `auth` raise."""
        invite = client.invite
        left = invite.expires - self._clock()
        if left <= 0:
            raise ChatError("forbidden", "This invite has expired; ask for a new link.")
        if self._ask(lambda: self._engine.invite_uses(invite.id)) >= invite.uses:
            raise _used_up(invite)
        registry.set_nick(client, nick, reply_id)
        if self._ask(lambda: self._engine.use_invite(invite.id, invite.uses, invite.expires)) is None:
            raise _used_up(invite)  # the last use went to someone else meanwhile: the nick stays, not reserved
        token = issue(self._key, nick, left, invite.rooms, invite.op)
        registry.authenticate(client, token, reply_id, reveal=True)

    def _ask(self, read):
        try:
            return read()
        except Unavailable as exc:
            raise unavailable(exc) from None


def _used_up(invite: Invite) -> ChatError:
    return ChatError("forbidden", f"This invite has been used by all {invite.uses} people it was for; "
                                  "you can chat as a guest, or ask for a new link.")


def invite_main(argv, environ=None) -> int:
    """`python roomchat.py invite --rooms class[,lobby] --uses 40 --ttl 8h [--op] [server options]`:
    print the page link of a class invite, for the server those options (or ROOMCHAT_* variables)
    describe: its --host, --port, TLS and token secret."""
    environ = os.environ if environ is None else environ
    import argparse

    from chatserver.config import from_args

    parser = argparse.ArgumentParser(prog="roomchat.py invite", description="Print a class invite link.",
                                     epilog="Any server option (--host, --port, --certfile, --token-secret-file ...)"
                                            " may follow, as given to the server.")
    parser.add_argument("--rooms", action="append", help="rooms it lets people join, comma-separated or "
                        "repeated; the first is the one the page opens (default: any room)")
    parser.add_argument("--uses", type=int, required=True, help=f"how many people may use it (1 to {MAX_USES})")
    parser.add_argument("--ttl", default="8h", help="how long it is valid: 90s, 15m, 1h, 7d (default 8h)")
    parser.add_argument("--op", action="store_true", help="make each person who uses it an operator")
    args, rest = parser.parse_known_args(argv)
    config = from_args(rest, environ)
    try:
        if config.token_key() is None:
            raise ValueError(NO_SECRET)
        rooms = None if args.rooms is None else [r.strip() for arg in args.rooms for r in arg.split(",") if r.strip()]
        if rooms == []:
            raise ValueError("--rooms names no room")
        token = issue_invite(config.token_key(), rooms, args.uses, parse_ttl(args.ttl), args.op)
    except ValueError as exc:
        parser.error(str(exc))
    if config.host in ("0.0.0.0", "::", ""):
        print(f"roomchat invite: --host {config.host or '(empty)'} listens everywhere but is no address to open; "
              "give the name people use, e.g. --host chat.school.example", file=sys.stderr)
    scheme = "https" if config.certfile else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"{scheme}://{host}:{config.port}/?invite={token}" + (f"#{rooms[0]}" if rooms else ""))
    return 0
