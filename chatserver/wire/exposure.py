"""Who may talk to the server from a browser: the Host allow-list and the Origin check. Pure, no sockets.

- Host (every request, HTTP and WebSocket): against DNS rebinding, where a page on a name the
  attacker controls is re-pointed at our address and so counts as same-origin. Only Host names
  the server answers to pass; others get 400. Default: the names it is bound to (see
  `default_hosts`); `--allowed-hosts` replaces them, except loopback and the bound address,
  which are always answered (`always_hosts`: health checks, /metrics and selftest on the machine
  itself keep working behind a proxy); `*` lets any Host through.
- Origin (WebSocket upgrades): against other pages the user visits. A browser always sends
  `Origin`; it must be the server's own (scheme, host and port, from the request's scheme and
  Host) or one listed with `--allow-origin`, else 403. `null` (file:// pages, sandboxed frames)
  is refused unless listed as `null`; `*` allows any. Without `Origin` (not a browser) a client
  is let in: it could send any Origin it liked anyway.

Each check is a callable for handshake.Policy. The first refusal of each Host and each Origin is
logged with the option that would allow it; `_lock` (a leaf) guards that memory of what was logged.
"""

import ipaddress
import logging
import re
import socket
import threading

from chatserver.errors import HandshakeError
from chatserver.wire.handshake import Policy, Request

log = logging.getLogger("roomchat.exposure")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
MAX_REMEMBERED = 1000  # refused hosts/origins logged; after that, new ones are not logged
_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*")
_DEFAULT_PORT = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None]:
    """A Host value (RFC 9110 section 7.2) -> (name, port): 'Example.COM.:80' -> ('example.com', 80),
    '[::1]:8765' -> ('[::1]', 8765), '10.0.0.5' -> ('10.0.0.5', None). Names are lower-cased, a
    trailing dot dropped, IPv6 kept in brackets. Raises ValueError for anything else."""
    value = value.strip().lower()
    port = None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise ValueError(value)
        ipaddress.IPv6Address(name)  # ValueError if not
        name = f"[{name}]"
        if rest:
            if not rest.startswith(":"):
                raise ValueError(value)
            port = rest[1:]
    else:
        name, colon, port = value.partition(":")
        port = port if colon else None
        name = name[:-1] if name.endswith(".") else name
        if not _NAME.fullmatch(name):
            raise ValueError(value)
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(value)
        port = int(port)
    return name, port


def is_ip_literal(name: str) -> bool:
    """'10.0.0.5' or '[::1]' (an address, as a Host names it)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def always_hosts(bind_host: str) -> set:
    """The names answered whatever `--allowed-hosts` says: localhost, 127.0.0.1, [::1] and the bound
    address (unless a wildcard). None of them can be a rebinding name: an attacker's page is on a
    name the attacker controls, and that name is what its Host says."""
    names = set(LOOPBACK_NAMES)
    if bind_host not in WILDCARD_BINDS:
        names.add(f"[{bind_host}]" if ":" in bind_host else bind_host.lower())
    return names


def default_hosts(bind_host: str) -> tuple[set, bool]:
    """(names, any_ip_literal) answered by default for a server bound to `bind_host`.

    Always: localhost, 127.0.0.1, [::1] (all a loopback bind answers to), the machine's name
    (`hostname`, `hostname.local`) and the bound name or address itself. Wildcard bind (0.0.0.0,
    ::): also any IP address typed as such (http://192.168.1.20:8765/), since an IP literal cannot
    be a rebinding name. A port in Host is not checked: port mappings and proxies change it.
    """
    names = always_hosts(bind_host)
    machine = socket.gethostname().lower()
    if machine:
        names |= {machine, f"{machine}.local"}
    return names, bind_host in WILDCARD_BINDS


class HostCheck:
    """handshake.Policy.check_host: 400 unless the request's Host is one we answer to."""

    def __init__(self, allowed=(), bind_host: str = "127.0.0.1"):
        """`allowed`: names ('chat.example.com', '10.0.0.5', '[::1]', with a port to pin one) or
        '*'; empty means `default_hosts(bind_host)`, else they and `always_hosts(bind_host)`.
        Raises ValueError for a malformed entry."""
        self.any_host = "*" in allowed
        try:
            entries = [split_host(entry) for entry in allowed if entry != "*"]
        except ValueError as exc:
            raise ValueError(f"{exc} is not a host name, an IP address (with an optional :port) or *") from None
        if allowed:
            self.names = {name for name, port in entries if port is None} | always_hosts(bind_host)
            self.any_ip = False
        else:
            self.names, self.any_ip = default_hosts(bind_host)
        self.pinned = {(name, port) for name, port in entries if port is not None}
        self._logged = _Remembered()

    def describe(self) -> str:
        """The rule, for the start-up log."""
        if self.any_host:
            return "any Host"
        names = sorted(self.names) + sorted(f"{name}:{port}" for name, port in self.pinned)
        return ", ".join(names) + (", any IP address" if self.any_ip else "")

    def answers(self, name: str, port: int | None) -> bool:
        """True if a request whose Host is `name` (as split_host gives it) with `port` passes."""
        return (self.any_host or name in self.names or (name, port) in self.pinned
                or (self.any_ip and is_ip_literal(name)))

    def __call__(self, request: Request) -> None:
        """Raises HandshakeError(400) for a missing (RFC 9112 section 3.2), malformed or unknown Host."""
        value = request.headers.get("host")
        if value is None:
            if self.any_host:
                return
            raise HandshakeError(400, "missing Host header")
        try:
            name, port = split_host(value)
        except ValueError:
            raise HandshakeError(400, "malformed Host header") from None
        if self.answers(name, port):
            return
        if self._logged.first(name):
            log.warning("refused Host %r (400); to allow it: --allowed-hosts %s", value[:100], name)
        raise HandshakeError(400, "this server does not answer to that Host name")


def normalize_origin(origin: str) -> str | None:
    """'HTTP://Example.com:80' -> 'http://example.com'; 'null' -> 'null'; None if malformed
    (RFC 6454 section 6.2: scheme "://" host [":" port], nothing after)."""
    origin = origin.strip().lower()
    if origin == "null":
        return origin
    scheme, sep, hostport = origin.partition("://")
    if not sep or scheme not in _DEFAULT_PORT:
        return None
    try:
        name, port = split_host(hostport)
    except ValueError:
        return None
    return f"{scheme}://{name}" + ("" if port in (None, _DEFAULT_PORT[scheme]) else f":{port}")


class OriginCheck:
    """handshake.Policy.check_origin: 403 unless Origin is absent, our own or listed."""

    def __init__(self, allowed=()):
        """`allowed`: origins ('https://example.org:8443'), 'null', or '*'. Raises ValueError for
        an entry that is none of these."""
        self.any_origin = "*" in allowed
        self.allowed = set()
        for entry in allowed:
            if entry != "*":
                origin = normalize_origin(entry)
                if origin is None:
                    raise ValueError(f"{entry!r} is not an origin like https://example.org:8443, null or *")
                self.allowed.add(origin)
        self._logged = _Remembered()

    def __call__(self, request: Request) -> None:
        """Raises HandshakeError(403) for an Origin that is not allowed (RFC 6455 section 4.2.2 step 4,
        section 10.2)."""
        origin = request.headers.get("origin")
        if origin is None or self.any_origin:
            return
        own = normalize_origin(f"{request.scheme}://{request.headers.get('host', '')}")
        normal = normalize_origin(origin)
        if normal is not None and (normal == own or normal in self.allowed):
            return
        if self._logged.first(origin):
            hint = normal or "<origin>"
            log.warning("refused a WebSocket from Origin %r (403); to allow it: --allow-origin %s", origin[:100], hint)
        raise HandshakeError(403, "this page's origin may not open a WebSocket here")


class _Remembered:
    """A bounded set, safe from any thread: `first(x)` is True once per x (for MAX_REMEMBERED values)."""

    def __init__(self):
        self._seen = set()
        self._lock = threading.Lock()

    def first(self, value: str) -> bool:
        """True the first time `value` is seen (while fewer than MAX_REMEMBERED are)."""
        with self._lock:
            if value in self._seen or len(self._seen) >= MAX_REMEMBERED:
                return False
            self._seen.add(value)
            return True


def policy(allowed_hosts=(), allow_origin=(), bind_host: str = "127.0.0.1") -> Policy:
    """The handshake policy for these settings; warns about `*`. Raises ValueError for a malformed entry."""
    hosts, origins = HostCheck(allowed_hosts, bind_host), OriginCheck(allow_origin)
    if hosts.any_host:
        log.warning("--allowed-hosts *: any Host name is answered, so DNS rebinding is not prevented")
    if origins.any_origin:
        log.warning("--allow-origin *: any web page your users visit can open a WebSocket here and chat as them")
    return Policy(check_host=hosts, check_origin=origins)
