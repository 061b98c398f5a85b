"""The terminal client's command line and addresses: `python roomchat.py client [URL] [options]`.

Pure functions, no sockets: the default address from the server's own variables, the forms of
address people type, the resume token added to the query, and the TLS options websocket-client
takes (`sslopt`, which become an `ssl.SSLContext`'s settings).
"""

import argparse
import os
import ssl
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from chatclient.commands import UsageError, check_name

PING_INTERVAL = 15.0  # seconds of silence from the server before we ping it
PING_TIMEOUT = 5.0  # seconds after that ping with nothing heard: the connection is dead


def default_url(env=os.environ) -> str:
    """Where a server started with the same ROOMCHAT_HOST / ROOMCHAT_PORT (and ROOMCHAT_CERTFILE:
    wss://) listens; by default ws://127.0.0.1:8765/. A server listening on every address is
    reached on loopback."""
    host = env.get("ROOMCHAT_HOST") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "wss" if env.get("ROOMCHAT_CERTFILE") else "ws"
    return f"{scheme}://{host}:{env.get('ROOMCHAT_PORT') or 8765}/"


def seconds(text: str) -> float:
    """A positive number of seconds, for argparse. Raises argparse.ArgumentTypeError."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def parse_args(argv, env=os.environ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="roomchat.py client",
        description="Chat in roomchat rooms from a terminal; lines come from stdin, so pipes work too.",
        epilog="Exit status: 0 when the server accepted every request; 1 when it refused one (or, "
        "with a pipe, a line could not be sent, e.g. text with no room to go to), with one line on "
        "stderr saying what, or when the server could not be reached or closed the connection for "
        "good (4001: token expired, 4002: replaced); 130 after Ctrl-C. "
        "Type /help once connected for the commands.",
    )
    url = default_url(env)
    parser.add_argument("url", nargs="?", default=url,
                        help=f"server address (default {url}, from ROOMCHAT_HOST and ROOMCHAT_PORT); "
                        "ws://, wss://, or with ?token=TOKEN for a server that takes identity tokens")
    parser.add_argument("--nick", help="nick to use (default: the guest nick the server gives)")
    parser.add_argument("--room", help="room to join at start; plain lines go there")
    parser.add_argument("--cafile", default=env.get("ROOMCHAT_CAFILE") or None, metavar="PATH",
                        help="for wss://: trust the certificate authority in this PEM file, besides the "
                        "system's (default: ROOMCHAT_CAFILE)")
    parser.add_argument("--ping-interval", type=seconds, default=PING_INTERVAL, metavar="SECONDS",
                        help=f"ping the server after this long without hearing from it (default {PING_INTERVAL:g})")
    parser.add_argument("--ping-timeout", type=seconds, default=PING_TIMEOUT, metavar="SECONDS",
                        help="and call the connection dead (and reconnect) if nothing comes this long after "
                        f"the ping (default {PING_TIMEOUT:g})")
    args = parser.parse_args(argv)
    for kind in ("nick", "room"):
        try:
            if getattr(args, kind) is not None:
                check_name(getattr(args, kind), kind)
        except UsageError as exc:
            parser.error(f"--{kind}: {exc}")
    try:
        args.sslopt = sslopt(args.cafile)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"--cafile {args.cafile}: not a readable PEM file of certificates ({exc.strerror or exc})")
    return args


def normalize_url(url: str) -> str:
    """Accept ws://, wss://, http:// and https:// addresses, or a bare HOST:PORT."""
    if url.startswith(("http://", "https://")):
        url = "ws" + url[len("http"):]
    if "://" not in url:
        url = "ws://" + url
    return url if url.count("/") > 2 else url + "/"


def with_resume(url: str, token: str | None) -> str:
    """`url` with `resume=token` in its query (replacing any there), other parameters such as
    `token=` kept; `url` itself without a token."""
    if not token:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "resume"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("resume", token)])))


def sslopt(cafile: str | None) -> dict:
    """websocket-client's TLS options for wss://: the system's CAs, plus `cafile`'s if given.
    Certificates and host names are always checked (Python's ssl defaults)."""
    if cafile is None:
        return {}
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=cafile)
    return {"context": context}
