"""Trusted reverse proxies: whose `Forwarded` / `X-Forwarded-*` headers we believe. Pure, no sockets.

Behind a proxy every TCP peer is the proxy. For a peer listed in `--trusted-proxy` (addresses or
networks), the client's address and scheme come from the one header `--forwarded-header` names:
`x-forwarded-for` (the default: `X-Forwarded-For` and `X-Forwarded-Proto`, what nginx and Caddy
set) or `forwarded` (RFC 7239 section 5.2: `for=` and `proto=`). The other header is never read:
a proxy passes on what it does not set itself, so a client's own `Forwarded` reaches us through a
proxy that sets only X-Forwarded-For, and must not be believed. From any peer that is not a
trusted proxy all of them are ignored, since anyone can send them.

In a chain (`X-Forwarded-For: client, proxy1, proxy2`) each proxy appends the address it saw, so
the list is read from the right: trusted proxies are skipped, and the first address that is not a
trusted proxy is the client (what a client wrote itself sits further left and is never reached).
"""

import ipaddress
import re

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
HEADERS = ("x-forwarded-for", "forwarded")  # --forwarded-header's values; the first is the default
_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


def parse_network(entry: str) -> Network:
    """'10.0.0.5' or '10.0.0.0/8' or '::1' -> a network. Raises ValueError for anything else."""
    return ipaddress.ip_network(entry.strip(), strict=False)


def parse_address(node: str) -> str | None:
    """The IP in a `for=` node or an X-Forwarded-For entry: '192.0.2.60', '192.0.2.60:4711',
    '[2001:db8::17]:4711', '2001:db8::17'; None for 'unknown', obfuscated names or junk
    (RFC 7239 section 6). Raises nothing."""
    node = node.strip().strip('"')
    if node.startswith("["):
        node = node[1:].split("]", 1)[0]
    elif node.count(":") == 1:
        node = node.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None


class TrustedProxies:
    """The `--trusted-proxy` list, and what a trusted proxy tells us about its client."""

    def __init__(self, entries=(), header: str = HEADERS[0]):
        """`entries`: addresses or networks; `header`: which forwarding header to believe (one of
        HEADERS). Raises ValueError for an entry that is not an address or a network, or another header."""
        if header not in HEADERS:
            raise ValueError(f"{header!r} is not one of {', '.join(HEADERS)}")
        self._networks = [parse_network(entry) for entry in entries]
        self.header = header

    def trusts(self, address: str | None) -> bool:
        """`address` (an IP as text) is one of the trusted proxies. Raises nothing."""
        if not address or not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client(self, peer_ip: str, headers: dict) -> tuple[str | None, str | None]:
        """(client address, scheme) as the proxy at `peer_ip` reports them, from request headers
        with lower-case names; (None, None) when `peer_ip` is not trusted, and None for whatever
        the headers do not say. The scheme is "http" or "https". Raises nothing."""
        if not self.trusts(peer_ip):
            return None, None
        if self.header == "forwarded":
            elements = [dict(_pairs(element)) for element in headers.get("forwarded", "").split(",")]
            nodes = [element.get("for", "") for element in elements]
            protos = [element.get("proto", "") for element in elements]
        else:
            nodes = headers.get("x-forwarded-for", "").split(",")
            protos = headers.get("x-forwarded-proto", "").split(",")
        address = None
        for node in reversed(nodes):
            address = parse_address(node)
            if not self.trusts(address):
                break
        scheme = protos[0].strip().lower() if protos else ""
        return address, scheme if scheme in ("http", "https") else None


def _pairs(element: str):
    """`for=192.0.2.60;proto=http` -> ('for', '192.0.2.60'), ('proto', 'http'); names lower-cased."""
    for pair in element.split(";"):
        match = _PAIR.fullmatch(pair)
        if match:
            yield match[1].lower(), match[2].strip('"')
