"""Metrics' pure parts: who may read /metrics, label values kept bounded, per-server registries."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatserver.ops.metrics import Metrics, close_label
from chatserver.wire.proxies import TrustedProxies


@pytest.mark.parametrize(("peer", "headers", "allowed"), [
    ("127.0.0.1", {}, True),
    ("::1", {}, True),
    ("127.8.9.10", {}, True),
    ("192.0.2.7", {}, False),
    ("192.0.2.7", {"x-forwarded-for": "127.0.0.1"}, False),  # not a trusted proxy: its header is ignored
    ("10.0.0.2", {}, True),  # the trusted proxy itself
    ("10.0.0.2", {"x-forwarded-for": "198.51.100.4"}, False),  # a client it forwards
    ("10.0.0.2", {"forwarded": "for=127.0.0.1"}, True),  # a client on the proxy's host
    ("127.0.0.1", {"x-forwarded-for": "198.51.100.4"}, True),  # loopback is no proxy here: header ignored
    ("192.0.2.7", {"authorization": "Bearer tok-1"}, True),
    ("192.0.2.7", {"authorization": "bearer  tok-1 "}, True),
    ("192.0.2.7", {"authorization": "Bearer tok-2"}, False),
    ("192.0.2.7", {"authorization": "Bearer "}, False),
    ("not an address", {}, False),
])
def test_who_may_read_metrics(peer, headers, allowed):
    """Loopback, a trusted proxy and the clients it reports on loopback, or the bearer token."""
    metrics = Metrics("tok-1", TrustedProxies(["10.0.0.0/8"]))
    assert metrics.allowed(headers, peer) is allowed


def test_no_token_means_no_bearer_access():
    """Without --metrics-token an empty bearer token opens nothing."""
    assert not Metrics("").allowed({"authorization": "Bearer "}, "192.0.2.7")


def test_close_codes_from_clients_are_grouped():
    """RFC 6455 codes stay as they are; the free 3000-4999 range becomes 3xxx and 4xxx."""
    assert [close_label(c) for c in (1000, 1006, 1011, 3000, 3999, 4000, 4999)] == [
        "1000", "1006", "1011", "3xxx", "3xxx", "4xxx", "4xxx"]


def samples(metrics: Metrics) -> dict:
    families = text_string_to_metric_families(metrics.exposition().decode())
    return {(s.name, tuple(s.labels.values())): s.value for f in families for s in f.samples}


def test_unknown_request_types_share_one_label_and_servers_do_not_share_series():
    """Types a client invents are counted as `unknown` (bounded labels); two Metrics in one process
    count apart."""
    first, second = Metrics(), Metrics()
    first.received({"chat": 2, "x" * 40: 1, "other": 3, "invalid": 1})
    got = samples(first)
    assert got[("roomchat_messages_received_total", ("chat",))] == 2
    assert got[("roomchat_messages_received_total", ("unknown",))] == 4
    assert got[("roomchat_messages_received_total", ("invalid",))] == 1
    assert not any("x" * 40 in labels for _name, labels in got)
    assert samples(second)[("roomchat_messages_received_total", ("chat",))] == 0
