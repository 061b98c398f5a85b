"""Settings: one dataclass, each field an option `--some-name` and a variable `ROOMCHAT_SOME_NAME`.

Precedence: command line, then environment, then the default written here. A list setting (a
tuple field) takes its option several times or comma-separated values, and its variable the
comma-separated values. A switch (a bool field) is an option without a value, and its variable
is on for 1, true, yes or on.
"""

import argparse
import os
from dataclasses import dataclass, field, fields

from chatserver.protocol import EDIT_WINDOW, valid_nick
from chatserver.wire.exposure import HostCheck, OriginCheck
from chatserver.wire.proxies import HEADERS, TrustedProxies

MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)
DEFAULT_RESERVED = "admin,root,server,system,roomchat,operator,moderator"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    log_level: str = "INFO"
    log_format: str = "text"
    db: str = "roomchat.db"
    redis: str = ""
    redis_lease: float = 5.0
    max_message_bytes: int = 65536
    max_text_chars: int = 2000
    max_rooms: int = 32
    rate_burst: int = 20
    rate_per_second: float = 5.0
    max_outbox_bytes: int = 1024 * 1024
    max_reply_bytes: int = 256 * 1024
    address_rate_factor: float = 10.0
    max_connections: int = 0
    max_connections_per_address: int = 64  # a class of 30 behind one NAT, two tabs each, with room to spare
    history_per_room: int = 10000
    history_max_bytes: int = 1024**3
    history_max_age: float = 0.0
    history_max_rooms: int = 10000
    edit_window: int = EDIT_WINDOW
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    certfile: str = ""
    keyfile: str = ""
    allowed_hosts: tuple = ()
    allow_origin: tuple = ()
    trusted_proxy: tuple = ()
    forwarded_header: str = "x-forwarded-for"
    token_secret: str = field(default="", repr=False)  # never in a repr, a log line or --help
    token_secret_file: str = ""
    require_token: bool = False
    reserved_nicks: str = DEFAULT_RESERVED
    metrics_token: str = ""
    trace: bool = False

    def problem(self) -> str | None:
        """A sentence saying which setting is out of range, or None."""
        if not 0 <= self.port <= 65535:
            return f"port {self.port} is not between 0 and 65535"
        for name in ("max_message_bytes", "max_text_chars", "max_rooms", "rate_burst", "max_outbox_bytes",
                     "history_per_room", "max_reply_bytes"):
            if getattr(self, name) < 1:
                return f"{name.replace('_', '-')} must be at least 1"
        for name in ("max_connections", "max_connections_per_address", "history_max_bytes", "history_max_age",
                     "history_max_rooms", "edit_window"):
            if getattr(self, name) < 0:
                return f"{name.replace('_', '-')} must be 0 (no limit) or more"
        for name in ("rate_per_second", "ping_interval", "ping_timeout", "handshake_timeout", "address_rate_factor",
                     "redis_lease"):
            if getattr(self, name) <= 0:
                return f"{name.replace('_', '-')} must be more than 0"
        if self.redis and self.db != "roomchat.db":
            return "--db and --redis are mutually exclusive: with --redis, history lives in Redis"
        if self.redis and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            return f"--redis {self.redis!r} is not a redis://HOST:PORT/DB URL"
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            return f"log-level {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR"
        if self.log_format not in ("text", "json"):
            return f"log-format {self.log_format!r} is not text or json"
        if self.keyfile and not self.certfile:
            return "keyfile needs certfile"
        if self.forwarded_header not in HEADERS:
            return f"forwarded-header {self.forwarded_header!r} is not {' or '.join(HEADERS)}"
        for name, check in (("allowed-hosts", HostCheck), ("allow-origin", OriginCheck),
                            ("trusted-proxy", TrustedProxies)):
            try:
                check(getattr(self, name.replace("-", "_")))
            except ValueError as exc:
                return f"{name}: {exc}"
        for nick in self.reserved():
            if not valid_nick(nick):
                return f"reserved-nicks: {nick[:40]!r} is not a nick"
        return self._secret_problem()

    def _secret_problem(self) -> str | None:
        if self.token_secret and self.token_secret_file:
            return "--token-secret and --token-secret-file are mutually exclusive"
        try:
            key = self.token_key()
        except OSError as exc:
            return f"cannot read --token-secret-file {self.token_secret_file}: {exc.strerror or exc}"
        if key is not None and len(key) < MIN_SECRET_BYTES:
            return f"the token secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 3.2); it has {len(key)}"
        if self.require_token and key is None:
            return "--require-token needs --token-secret or --token-secret-file"
        return None

    def token_key(self) -> bytes | None:
        """The HMAC key for tokens, or None when tokens are off. The file's content is the key,
        without a final newline. Raises OSError when the file cannot be read."""
        if self.token_secret_file:
            with open(self.token_secret_file, "rb") as file:
                return file.read().rstrip(b"\r\n") or None
        return self.token_secret.encode() or None

    def reserved(self) -> list[str]:
        """The nicks nobody may take without a token for them (`reserved_nicks`, comma-separated)."""
        return [nick.strip() for nick in self.reserved_nicks.split(",") if nick.strip()]

    def limits(self) -> dict:
        """What `welcome` tells each client about the limits it must stay within."""
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_text_chars": self.max_text_chars,
            "max_rooms": self.max_rooms,
            "rate_burst": self.rate_burst,
            "rate_per_second": self.rate_per_second,
            "address_rate_burst": self.address_rate_burst,
            "address_rate_per_second": self.rate_per_second * self.address_rate_factor,
            "max_reply_bytes": self.max_reply_bytes,
            "max_outbox_bytes": self.max_outbox_bytes,
            "edit_window": self.edit_window,
        }

    @property
    def address_rate_burst(self) -> int:
        """Messages the connections of one address may send at once, together."""
        return max(1, round(self.rate_burst * self.address_rate_factor))


HELP = {
    "host": "address to listen on",
    "port": "TCP port for WebSocket and HTTP (0 picks a free one)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text (one line per event, for people) or json (one JSON object per line, for log collectors)",
    "db": "SQLite file for chat history; ':memory:' keeps it in memory only",
    "redis": "redis://HOST:PORT/DB: history, nicks and rooms in Redis, shared by several roomchat processes",
    "redis_lease": "seconds a process on Redis stays alive to the others without a heartbeat; one silent for "
                   "twice this is reaped: its members leave, its nicks are freed (it takes them back if it returns)",
    "max_message_bytes": "largest WebSocket message accepted; larger ones close with 1009",
    "max_text_chars": "longest chat or dm text, in characters",
    "max_rooms": "rooms one connection may be in at once",
    "rate_burst": "messages a connection may send at once before rate limiting",
    "rate_per_second": "sustained messages per second per connection",
    "max_outbox_bytes": "bytes of others' traffic (room events, DMs) queued for a client that is not reading "
                        "before it is closed with 1008",
    "max_reply_bytes": "largest reply (joined, history, rooms, who), in bytes; longer lists are cut and say "
                       "truncated; also how much of a client's replies may wait unread before its next request",
    "address_rate_factor": "connections from one address share a rate of this many times --rate-burst and "
                           "--rate-per-second",
    "max_connections": "connections at once; more get HTTP 503 (0: the open-file limit less headroom)",
    "max_connections_per_address": "connections at once from one client address (behind a --trusted-proxy: the "
                                   "address it reports); more get HTTP 503 (0: no cap)",
    "history_per_room": "stored events (chats, edits, deletes, reactions) kept per room; older ones are pruned",
    "history_max_bytes": "bytes the history may use (SQLite: the file and its WAL; :memory: the events in memory; "
                         "Redis: its used_memory, the rooms quiet longest forgotten first); the oldest events are "
                         "pruned first (0: no limit)",
    "history_max_age": "seconds an event is kept in the history, SQLite, :memory: or Redis (0: no limit)",
    "history_max_rooms": "rooms with history kept (SQLite, :memory: or Redis); those quiet longest are forgotten first "
                         "(0: no limit)",
    "edit_window": "seconds after sending it that its author may edit or delete a chat (0: never; operators "
                   "delete any chat at any time)",
    "ping_interval": "seconds between server pings that detect dead connections",
    "ping_timeout": "seconds to wait for a pong before closing with 1011",
    "handshake_timeout": "seconds a new connection has to finish its opening handshake",
    "certfile": "PEM certificate chain: serve https:// and wss:// (TLS) on the port",
    "keyfile": "PEM private key for --certfile, if not in that file",
    "allowed_hosts": "Host names answered, others get 400 (against DNS rebinding); '*' any "
                     "(default: this machine's name and any IP address when bound to 0.0.0.0 or ::); "
                     "localhost, 127.0.0.1, [::1] and the --host address are always answered",
    "allow_origin": "another origin whose pages may open a WebSocket, e.g. https://example.org; "
                    "'null' for file:// pages; '*' any (warned). Pages of this server are always allowed",
    "trusted_proxy": "address or network (10.0.0.0/8) of a reverse proxy whose forwarding header "
                     "(--forwarded-header) is believed",
    "forwarded_header": "which header a --trusted-proxy reports the client in: x-forwarded-for "
                        "(with X-Forwarded-Proto; what nginx and Caddy set) or forwarded (RFC 7239); "
                        "the other one is ignored",
    "token_secret": "HMAC secret (at least 32 bytes) that signs identity tokens (HS256); prefer the file or the"
                    " variable, a command line is visible to every user of the machine",
    "token_secret_file": "file holding the token secret (a final line ending is ignored)",
    "require_token": "refuse WebSocket upgrades without a valid ?token= (HTTP 401)",
    "reserved_nicks": "comma-separated nicks nobody may take without a token for them",
    "metrics_token": "GET /metrics also answers a request with 'Authorization: Bearer TOKEN' from anywhere "
                     "(otherwise only loopback and trusted proxies); prefer the variable to the option",
    "trace": "narrate each message's way through the server (frame, JSON, handler, registry, fan-out), "
             "one line per step on stderr; for teaching, it slows the server",
}

EPILOG = """Every option can also be set by an environment variable, shown in brackets. Options marked
"list" may be given several times or as comma-separated values.

On a network: only pages served by this server may open a WebSocket (the Origin check: others
get 403, see --allow-origin), and only the Host names it is bound to are answered (others get
400, see --allowed-hosts).
With --certfile (and --keyfile) the same port serves https:// and wss://. Behind a reverse
proxy, list it with --trusted-proxy (and --forwarded-header). docs/deploy.md, "On a network", has
the details."""


def env_name(field_name: str) -> str:
    return "ROOMCHAT_" + field_name.upper()


def build_parser(prog: str = "roomchat.py", commands: dict | None = None) -> argparse.ArgumentParser:
    """The server's parser: one option per Config field. `commands`: {name: one line} of the
    subcommands the program also runs (`prog NAME --help` for each), listed in --help."""
    description = "roomchat: a room-based chat server over WebSocket, one thread per client."
    usage = None
    if commands:
        width = max(map(len, commands))
        description += "\n\ncommands (each has its own --help):\n" + "\n".join(
            f"  {prog} {name:<{width}}  {line}" for name, line in commands.items())
        usage = f"{prog} [OPTION ...]\n       {prog} {{{','.join(commands)}}} ..."
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(Config):
        option = "--" + f.name.replace("_", "-")
        if isinstance(f.default, tuple):
            help_text = f"list: {HELP[f.name]} [{env_name(f.name)}]"
            parser.add_argument(option, dest=f.name, action="append", default=None, metavar=f.name.upper(),
                                help=help_text)
            continue
        shown = "none" if f.default == "" else repr(f.default)
        help_text = f"{HELP[f.name]} (default {shown}) [{env_name(f.name)}]"
        if isinstance(f.default, bool):
            parser.add_argument(option, dest=f.name, action="store_const", const=True, default=None, help=help_text)
            continue
        parser.add_argument(option, dest=f.name, type=type(f.default), default=None, metavar=f.name.upper(),
                            help=help_text)
    return parser


def split_list(values) -> tuple:
    """['a,b', 'c'] -> ('a', 'b', 'c'): repeated options and comma-separated values alike."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def from_args(argv=None, environ=None, commands: dict | None = None) -> Config:
    """Build a Config from the command line and the environment; a bad value exits with usage
    (SystemExit 2), --help with the help (SystemExit 0). `commands` as for `build_parser`."""
    environ = os.environ if environ is None else environ
    parser = build_parser(commands=commands)
    args = parser.parse_args(argv)
    values = {}
    for f in fields(Config):
        value = getattr(args, f.name)
        if isinstance(f.default, tuple):
            if value is None and env_name(f.name) in environ:
                value = [environ[env_name(f.name)]]
            value = split_list(value) if value is not None else None
        elif value is None and env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                value = _from_text(raw, type(f.default))
            except ValueError:
                parser.error(f"{env_name(f.name)}={raw!r} is not a valid {type(f.default).__name__}")
        if value is not None:
            values[f.name] = value
    config = Config(**values)
    problem = config.problem()
    if problem:
        parser.error(problem)
    return config


def _from_text(raw: str, kind: type):
    """A variable's text as a value of the setting's type; booleans are 1/true/yes/on or 0/false/no/off.
    Raises ValueError."""
    if kind is not bool:
        return kind(raw)
    if raw.strip().lower() not in _TRUE + _FALSE:
        raise ValueError(raw)
    return raw.strip().lower() in _TRUE
