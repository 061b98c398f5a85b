"""Host allow-list, Origin check and trusted proxies on request heads alone (no sockets)."""

import logging
import socket

import pytest

from chatserver.errors import HandshakeError
from chatserver.wire.exposure import HostCheck, OriginCheck, normalize_origin, split_host
from chatserver.wire.handshake import Request
from chatserver.wire.proxies import TrustedProxies

MACHINE = socket.gethostname().lower()


def request(scheme: str = "http", **headers) -> Request:
    return Request("GET", "/", {name.replace("_", "-"): value for name, value in headers.items()}, scheme)


def status(check, req: Request) -> int:
    """101 when `check` lets `req` through, else the refusal's status."""
    try:
        check(req)
    except HandshakeError as exc:
        return exc.status
    return 101


@pytest.mark.parametrize("value, parsed", [
    ("Example.COM", ("example.com", None)),
    ("example.com.:8080", ("example.com", 8080)),
    ("10.0.0.5", ("10.0.0.5", None)),
    ("[::1]:8765", ("[::1]", 8765)),
    ("[::1]", ("[::1]", None)),
    ("my_pc", ("my_pc", None)),
])
def test_split_host_accepts_names_addresses_and_ports(value, parsed):
    """Host values split into a lower-case name (IPv6 in brackets) and an optional port."""
    assert split_host(value) == parsed


@pytest.mark.parametrize("value", ["", "a b", "evil.com/x", "host:0", "host:99999", "host:x", "[::1", "[zz]",
                                   "user@host", "a;b", "-x.com", "."])
def test_split_host_refuses_malformed_values(value):
    """Anything that is not name[:port] or [ipv6][:port] raises ValueError."""
    with pytest.raises(ValueError):
        split_host(value)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8765", "127.0.0.1", "127.0.0.1:1", "[::1]:8765",
                                  MACHINE, f"{MACHINE}.local:80"])
def test_loopback_bind_answers_its_own_names_on_any_port(host):
    """Bound to 127.0.0.1: localhost, 127.0.0.1, [::1] and the machine's name, with any port."""
    assert status(HostCheck(bind_host="127.0.0.1"), request(host=host)) == 101


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "192.168.1.20", "localhost.evil.example"])
def test_loopback_bind_refuses_other_names_with_400(host):
    """Bound to 127.0.0.1: a rebinding name, or an address it is not bound to, gets 400."""
    assert status(HostCheck(bind_host="127.0.0.1"), request(host=host)) == 400


def test_wildcard_bind_answers_any_ip_address_but_not_other_names():
    """Bound to 0.0.0.0: the page opens by any IP address (a LAN class), while names still must be ours."""
    check = HostCheck(bind_host="0.0.0.0")
    assert [status(check, request(host=h)) for h in ("192.168.1.20:8765", "[fe80::1]:8765", "localhost")] == [101] * 3
    assert status(check, request(host="rebind.evil.example:8765")) == 400


def test_specific_bind_answers_its_address():
    """Bound to a LAN address: that address answers, other addresses do not."""
    check = HostCheck(bind_host="192.168.1.20")
    assert status(check, request(host="192.168.1.20:8765")) == 101
    assert status(check, request(host="192.168.1.21:8765")) == 400


def test_allowed_hosts_replace_the_defaults_and_may_pin_a_port():
    """--allowed-hosts replaces the machine's names; an entry with a port answers on that port only."""
    check = HostCheck(("chat.example.com", "lan.example:8443"), bind_host="127.0.0.1")
    assert status(check, request(host="chat.example.com:443")) == 101
    assert status(check, request(host="lan.example:8443")) == 101
    assert status(check, request(host="lan.example:8444")) == 400
    assert status(check, request(host=MACHINE)) == 400


@pytest.mark.parametrize("bind, host", [("127.0.0.1", "localhost:8765"), ("127.0.0.1", "127.0.0.1:8765"),
                                        ("127.0.0.1", "[::1]:8765"), ("10.0.0.5", "10.0.0.5:8765"),
                                        ("::1", "[::1]"), ("0.0.0.0", "127.0.0.1")])
def test_loopback_and_the_bound_address_stay_answered_besides_allowed_hosts(bind, host):
    """With --allowed-hosts, loopback names and the bound address are still answered (health checks,
    /metrics and selftest on the machine itself), while other names are not."""
    check = HostCheck(("chat.example.com",), bind_host=bind)
    assert status(check, request(host=host)) == 101
    assert status(check, request(host="192.168.1.99")) == 400


def test_missing_or_malformed_host_is_400_unless_any_host():
    """No Host (RFC 9112 3.2) or a malformed one is 400; `*` answers any well-formed Host or none."""
    check = HostCheck(bind_host="127.0.0.1")
    assert status(check, request()) == 400
    assert status(check, request(host="a b")) == 400
    anything = HostCheck(("*",))
    assert status(anything, request()) == 101 and status(anything, request(host="evil.example")) == 101


def test_first_host_refusal_is_logged_once_with_the_option(caplog):
    """The first refusal of a Host name is logged with the --allowed-hosts value that would allow it."""
    check = HostCheck(bind_host="127.0.0.1")
    for _ in range(3):
        status(check, request(host="Chat.Example.com:8765"))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == ["refused Host 'Chat.Example.com:8765' (400); to allow it: --allowed-hosts chat.example.com"]


@pytest.mark.parametrize("origin, normal", [
    ("HTTP://Example.com:80", "http://example.com"),
    ("https://example.com:443", "https://example.com"),
    ("https://example.com:8443", "https://example.com:8443"),
    ("http://[::1]:8765", "http://[::1]:8765"),
    ("null", "null"),
    ("file://", None),
    ("http://example.com/path", None),
    ("ftp://example.com", None),
    ("http://a, http://b", None),
])
def test_origins_are_normalized_or_refused(origin, normal):
    """Scheme and host are lower-cased and the default port dropped; anything else is malformed."""
    assert normalize_origin(origin) == normal


def test_own_origin_and_no_origin_pass_others_get_403():
    """The page's own origin (scheme, host, port) and a client without Origin pass; others are 403."""
    check = OriginCheck()
    own = dict(host="127.0.0.1:8765")
    assert status(check, request(**own, origin="http://127.0.0.1:8765")) == 101
    assert status(check, request(**own)) == 101
    assert status(check, request(**own, origin="http://127.0.0.1:9000")) == 403  # another port
    assert status(check, request(**own, origin="https://127.0.0.1:8765")) == 403  # another scheme
    assert status(check, request(**own, origin="http://localhost:8765")) == 403  # another name
    assert status(check, request(**own, origin="null")) == 403
    assert status(check, request("https", **own, origin="https://127.0.0.1:8765")) == 101


def test_listed_origins_null_and_star():
    """--allow-origin lists extra origins (normalized), `null` allows file:// pages, `*` allows all."""
    listed = OriginCheck(("https://Example.org:443", "null"))
    assert status(listed, request(host="h", origin="https://example.org")) == 101
    assert status(listed, request(host="h", origin="null")) == 101
    assert status(listed, request(host="h", origin="https://example.net")) == 403
    assert status(OriginCheck(("*",)), request(host="h", origin="null")) == 101
    with pytest.raises(ValueError):
        OriginCheck(("example.org",))


def test_first_origin_refusal_is_logged_once_with_the_option(caplog):
    """The first refusal from an origin is logged once, with the --allow-origin value that would allow it."""
    check = OriginCheck()
    for origin in ("http://evil.example:9000", "http://evil.example:9000", "null"):
        status(check, request(host="127.0.0.1:8765", origin=origin))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "refused a WebSocket from Origin 'http://evil.example:9000' (403); to allow it: --allow-origin "
        "http://evil.example:9000",
        "refused a WebSocket from Origin 'null' (403); to allow it: --allow-origin null",
    ]


def test_untrusted_peer_forwarding_headers_are_ignored():
    """Forwarding headers from a peer that is not a trusted proxy say nothing."""
    headers = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
    assert TrustedProxies().client("127.0.0.1", headers) == (None, None)
    assert TrustedProxies(["10.0.0.0/8"]).client("127.0.0.1", headers) == (None, None)


def test_trusted_proxy_reports_client_and_scheme():
    """From a trusted proxy, X-Forwarded-For gives the client and X-Forwarded-Proto the scheme."""
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    headers = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
    assert proxies.client("127.0.0.1", headers) == ("203.0.113.7", "https")
    assert proxies.client("10.1.2.3", {"x-forwarded-for": "2001:db8::7"}) == ("2001:db8::7", None)


def test_forwarded_chain_is_read_from_the_right():
    """In a chain the first address that is not a trusted proxy, from the right, is the client:
    what the client wrote itself further left is never believed."""
    proxies = TrustedProxies(["10.0.0.0/8"])
    headers = {"x-forwarded-for": "6.6.6.6, 203.0.113.7, 10.0.0.9"}
    assert proxies.client("10.0.0.2", headers) == ("203.0.113.7", None)
    assert proxies.client("10.0.0.2", {"x-forwarded-for": "10.0.0.8, 10.0.0.9"}) == ("10.0.0.8", None)
    assert proxies.client("10.0.0.2", {"x-forwarded-for": "garbage"}) == (None, None)


def test_forwarded_header_rfc_7239():
    """With --forwarded-header forwarded, `Forwarded` (RFC 7239) is read and X-Forwarded-* ignored:
    quoted IPv6 with port, proto, any case."""
    proxies = TrustedProxies(["10.0.0.0/8"], header="forwarded")
    headers = {"forwarded": 'For="[2001:db8:cafe::17]:4711";Proto=HTTPS, for=10.0.0.9',
               "x-forwarded-for": "6.6.6.6"}
    assert proxies.client("10.0.0.2", headers) == ("2001:db8:cafe::17", "https")
    assert proxies.client("10.0.0.2", {"forwarded": "for=unknown"}) == (None, None)
    assert proxies.client("10.0.0.2", {"x-forwarded-for": "6.6.6.6"}) == (None, None)


def test_a_clients_own_forwarded_is_not_believed_by_default():
    """By default (x-forwarded-for, what nginx and Caddy set) a `Forwarded` header the client wrote,
    which such a proxy passes on untouched, is ignored: the proxy's X-Forwarded-For decides."""
    proxies = TrustedProxies(["127.0.0.1"])
    headers = {"forwarded": "for=198.51.100.7;proto=https", "x-forwarded-for": "203.0.113.7",
               "x-forwarded-proto": "http"}
    assert proxies.client("127.0.0.1", headers) == ("203.0.113.7", "http")
    assert proxies.client("127.0.0.1", {"forwarded": "for=198.51.100.7"}) == (None, None)


def test_forwarded_header_must_be_one_of_the_two():
    """Any other --forwarded-header value raises ValueError."""
    with pytest.raises(ValueError):
        TrustedProxies(["127.0.0.1"], header="x-real-ip")


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "proxy.example", ""])
def test_trusted_proxy_entries_must_be_addresses_or_networks(entry):
    """A --trusted-proxy entry that is not an address or network raises ValueError."""
    with pytest.raises(ValueError):
        TrustedProxies([entry])
