"""`python roomchat.py selftest ws://HOST:PORT/`: check any roomchat (or compatible) server
against protocol v1 (PROTOCOL.md and schema/).

Each check opens its own connections, with nicks and rooms unique to the run (so a live server's
users do not notice much beyond a few `st...` rooms in `rooms`), prints one line:

    ok    chat                 chat: every member gets it with the room's next seq; ...
    FAIL  ordering             member3 saw another order than the listener
    skip  error rate_limited   rate_burst is 100000: too many requests to reach it

and closes them. Every event received is checked against schema/events.json. Requests are paced
to the rate the server advertises in `welcome.limits`, except where a check provokes the limit.

Exit status: 0 when every check passed or was skipped, 1 when one failed, 2 when the server
cannot be reached or the arguments are wrong. Runs in the calling thread (the ordering check
starts a few threads of its own and joins them).
"""

import argparse
import os
import secrets
import sys

from chatclient import selftest_client, selftest_team  # noqa: F401 (selftest_team registers its checks)
from chatclient.options import default_url, normalize_url, sslopt
from chatclient.selftest_checks import CHECKS
from chatclient.selftest_client import CheckFailed, Probe, Skip

DEFAULT_TIMEOUT = 5.0


def one_line(text: str) -> str:
    """`text` with anything unprintable (newlines, ESC, bidi controls, ...) escaped, e.g. as \\x1b."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def run(url: str, timeout: float = DEFAULT_TIMEOUT, only=None, out=None, op_token: str | None = None) -> int:
    """Run the checks (all, or those named in `only`) against `url`; print one line each to `out`
    (sys.stdout). `op_token`: an operator's token, for the checks of room modes (skipped without
    one). Returns the exit status (0, 1 or 2, as the module docstring says)."""
    out = sys.stdout if out is None else out
    try:
        Probe(url, timeout).connect("connect").close()
    except CheckFailed as exc:
        print(f"FAIL  {'connect':<21} {one_line(str(exc))}", file=out, flush=True)
        return 2
    run_tag = secrets.token_hex(2)
    counts = {"ok": 0, "FAIL": 0, "skip": 0}
    for number, (name, fn) in enumerate(CHECKS):
        if only and name not in only:
            continue
        probe = Probe(url, timeout, f"{run_tag}{number:02d}", op_token)
        try:
            fn(probe)
            status, text = "ok", fn.__doc__.strip().splitlines()[0]
        except Skip as exc:
            status, text = "skip", str(exc)
        except CheckFailed as exc:
            status, text = "FAIL", str(exc)
        except Exception as exc:  # a reply shaped so oddly that the check itself tripped over it
            status, text = "FAIL", f"could not go on: {type(exc).__name__}: {exc}"
        finally:
            probe.close()
        counts[status] += 1
        print(f"{status:<5} {name:<21} {one_line(text)}", file=out, flush=True)
    print(f"selftest: {counts['ok']} passed, {counts['FAIL']} failed, {counts['skip']} skipped against {url}",
          file=out, flush=True)
    return 1 if counts["FAIL"] else 0


def minter(parser: argparse.ArgumentParser, path: str):
    """nick -> a token signed with the secret in `path`, as `roomchat.py token` makes it; a secret
    that cannot be read or is too short is a usage error (exit 2, one line)."""
    from chatserver.config import Config  # the server's own rules for the secret and its tokens
    from chatserver.rooms.identity import issue

    config = Config(token_secret_file=path)
    problem = config.problem()
    if problem:
        parser.error(problem)
    key = config.token_key()
    return lambda nick, op=False: issue(key, nick, selftest_client.TOKEN_TTL, op=op)


def main(argv=None) -> int:
    names = [name for name, _ in CHECKS]
    parser = argparse.ArgumentParser(
        prog="roomchat.py selftest",
        description="Check a roomchat (or compatible) server against protocol v1: each request type, "
        "each error code, ordering with concurrent senders, resume with `after`.",
        epilog="Exit status: 0 all passed (or skipped), 1 a check failed, 2 server unreachable. "
        f"Checks: {', '.join(names)}.",
    )
    parser.add_argument("url", nargs="?", default=default_url(),
                        help=f"server address (default from ROOMCHAT_HOST/ROOMCHAT_PORT: now {default_url()})")
    parser.add_argument("--cafile", default=os.environ.get("ROOMCHAT_CAFILE") or None, metavar="PATH",
                        help="PEM file of CA certificates to trust for wss:// [ROOMCHAT_CAFILE]")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for each expected event (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--only", metavar="NAME,...", help="run only these checks (comma-separated)")
    parser.add_argument("--op-token", default=os.environ.get("ROOMCHAT_OP_TOKEN") or None, metavar="TOKEN",
                        help="an operator's token (roomchat.py token --nick NICK --op), to check room modes "
                             "(moderated, slow_mode); without one those checks are skipped [ROOMCHAT_OP_TOKEN]")
    parser.add_argument("--token-secret-file", default=os.environ.get("ROOMCHAT_TOKEN_SECRET_FILE") or None,
                        metavar="FILE", help="the server's token secret: each connection gets a token minted "
                        "for a fresh nick, as a --require-token server wants [ROOMCHAT_TOKEN_SECRET_FILE]")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    selftest_client.SSLOPT = sslopt(args.cafile) if args.url.startswith("wss") else None
    if args.token_secret_file:
        selftest_client.MINT = minter(parser, args.token_secret_file)
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(names):
        parser.error(f"no such check: {', '.join(sorted(only - set(names)))}")
    return run(normalize_url(args.url), args.timeout, only, op_token=args.op_token)
