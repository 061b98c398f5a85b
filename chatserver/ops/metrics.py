"""What roomchat counts, and `GET /metrics` in the Prometheus text exposition format (prometheus_client).

One `Metrics` per server, on a `CollectorRegistry` of its own (never the process-wide default),
so several servers in one process, as in the tests, never share a series. Names follow
Prometheus' conventions: `roomchat_` prefix, `_total` on counters, base units (`_seconds`,
`_bytes`). Label values are bounded: request types and error codes are the protocol's, anything
else is `unknown`/`invalid`; close codes a client may choose freely (3000-4999) are grouped.

Who counts what (each hook is one line where it happens):
  app.py        connections opened, closed by close code; handshakes refused by status
  rooms/dispatch.py   messages received by type, rate-limit refusals (one add per type per batch)
  rooms/registry.py        room events published by type, deliveries, fan-out latency (per `deliver` call);
                error replies by code (rooms/registry.py too)
  engines       SQLite commit latency and batch size (per commit); engine errors, Redis reconnects
Read when scraped (no cost before): open connections and rooms (the hub's `stats`), bytes in
and out and slow-consumer drops (the transport's `Housekeeper.totals`).

Threads: any thread counts; prometheus_client guards each series with its own lock (a leaf,
taken inside the Registry lock at most). A delivery itself costs nothing: counts are per batch.

Access: `respond` serves the exposition only to a client on loopback or a trusted proxy (the
address a trusted proxy reports counts, so the world behind nginx is not "loopback"), or to one
presenting `Authorization: Bearer <--metrics-token>`; everyone else gets 403.
"""

import hmac
import ipaddress
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from chatserver.wire.proxies import TrustedProxies

disable_created_metrics()  # no `_created` series beside each counter: half the lines, nothing lost

REQUEST_TYPES = ("nick", "join", "leave", "chat", "dm", "rooms", "who", "history", "ping", "auth", "topic", "kick",
                 "ban", "mute", "mode")
ERROR_CODES = ("bad_json", "bad_message", "unknown_type", "bad_nick", "nick_taken", "bad_room", "not_in_room",
               "too_many_rooms", "no_such_user", "too_long", "rate_limited", "unavailable", "nick_reserved",
               "bad_token", "forbidden", "moderated", "slow_mode")
ROOM_EVENTS = ("chat", "presence", "nick", "topic", "kick", "ban", "mute", "mode")
FANOUT_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
FORBIDDEN = (b"/metrics is served to loopback and trusted proxies, or with an Authorization: Bearer token "
             b"(--metrics-token).\n")


def close_label(code: int) -> str:
    """A close code as a label value: RFC 6455's own codes as they are, 3xxx and 4xxx grouped
    (RFC 6455 section 7.4.2: free for applications, so a client could invent thousands)."""
    return str(code) if code < 3000 else f"{code // 1000}xxx"


class Metrics:
    """The server's metrics. Counters are public attributes (prometheus_client objects); the
    methods below are for hooks that need a little logic. Raises nothing unless noted."""

    def __init__(self, token: str = "", proxies: TrustedProxies | None = None):
        self.token = token
        self.proxies = proxies or TrustedProxies()
        self.registry = r = CollectorRegistry()
        self.opened = Counter("roomchat_connections_opened", "WebSocket connections opened (handshake done)",
                              registry=r)
        self.closed = Counter("roomchat_connections_closed", "WebSocket connections closed, by close code "
                              "(the first sent or received; 1006: lost without one)", ["code"], registry=r)
        self.refused = Counter("roomchat_handshakes_refused", "Opening handshakes refused, by HTTP status",
                               ["status"], registry=r)
        self._received = Counter("roomchat_messages_received", "Text messages received, by request type "
                                 "(unknown: no such type; invalid: not a JSON object with a type)", ["type"],
                                 registry=r)
        self._by_type = {kind: self._received.labels(kind) for kind in (*REQUEST_TYPES, "unknown", "invalid")}
        self._errors = Counter("roomchat_errors", "Error replies sent, by protocol error code", ["code"], registry=r)
        self._error_codes = {code: self._errors.labels(code) for code in ERROR_CODES}
        self.rate_limited = Counter("roomchat_rate_limited", "Messages refused by the rate limit", registry=r)
        self._published_by_type = Counter("roomchat_room_events_published", "Room events (chat, presence, "
                                          "nick) handed back by the engine for fan-out here", ["type"], registry=r)
        self._published = {kind: self._published_by_type.labels(kind) for kind in ROOM_EVENTS}
        self.deliveries = Counter("roomchat_room_event_deliveries", "Copies of room events queued to members",
                                  registry=r)
        self.fanout = Histogram("roomchat_fanout_seconds", "From the engine's hand-back of a batch of room "
                                "events to their frames queued on every member", buckets=FANOUT_BUCKETS, registry=r)
        self.commit = Histogram("roomchat_history_commit_seconds", "SQLite history commit latency (one "
                                "transaction per batch)", buckets=COMMIT_BUCKETS, registry=r)
        self.commit_events = Histogram("roomchat_history_commit_events", "Chat events per SQLite commit",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.engine_errors = Counter("roomchat_engine_errors", "Engine failures: SQLite commits that failed, "
                                     "Redis calls or subscriptions that failed", registry=r)
        self.engine_reconnects = Counter("roomchat_engine_reconnects", "Redis subscriptions re-established "
                                         "after a failure", registry=r)
        self._stats = dict  # () -> {"connections": N, "rooms": M}; set by watch()
        self._totals = dict  # () -> {"received": bytes, "sent": bytes, "slow_drops": N}
        r.register(self)

    def watch(self, stats, totals) -> None:
        """Where the scrape-time figures come from: the hub's `stats()` and the transport's
        `Housekeeper.totals()`."""
        self._stats, self._totals = stats, totals

    # -- hooks ------------------------------------------------------------------------------------

    def received(self, counts: dict) -> None:
        """{request type: messages} for one batch of messages from a client."""
        for kind, n in counts.items():
            self._by_type.get(kind, self._by_type["unknown"]).inc(n)

    def error(self, event: dict) -> None:
        """Count `event` if it is an `error` event (a reply about to be sent)."""
        if event.get("type") == "error":
            code = event["code"]
            (self._error_codes.get(code) or self._errors.labels(code)).inc()

    def committed(self, events: int, started: float) -> None:
        """One SQLite commit of `events` chat events that began at `started` (time.perf_counter())."""
        self.commit.observe(time.perf_counter() - started)
        self.commit_events.observe(events)

    def published(self, items: list, deliveries: int, started: float) -> None:
        """One `Registry.deliver` call: its [(room, event, Meta)], the frames it queued, and when it
        began (time.perf_counter())."""
        counts = {}
        for _room, event, _meta in items:
            counts[event["type"]] = counts.get(event["type"], 0) + 1
        for kind, n in counts.items():
            (self._published.get(kind) or self._published_by_type.labels(kind)).inc(n)
        self.deliveries.inc(deliveries)
        self.fanout.observe(time.perf_counter() - started)

    # -- scrape -----------------------------------------------------------------------------------

    def collect(self):
        """prometheus_client's collector hook: the figures read at scrape time."""
        stats, totals = self._stats(), self._totals()
        yield GaugeMetricFamily("roomchat_connections_open", "WebSocket connections open now",
                                value=stats.get("connections", 0))
        yield GaugeMetricFamily("roomchat_rooms", "Rooms with a member on this process", value=stats.get("rooms", 0))
        yield CounterMetricFamily("roomchat_received_bytes", "Bytes read from clients: HTTP request heads and "
                                  "WebSocket frames (with TLS, after decryption)", value=totals.get("received", 0))
        yield CounterMetricFamily("roomchat_sent_bytes", "Bytes the kernel accepted for clients: HTTP answers "
                                  "and WebSocket frames (with TLS, the records; not the TLS handshake)",
                                  value=totals.get("sent", 0))
        yield CounterMetricFamily("roomchat_slow_consumer_drops", "Clients closed (1008) because their "
                                  "outgoing queue passed max_outbox_bytes", value=totals.get("slow_drops", 0))

    def describe(self):
        """No description before collection (prometheus_client would otherwise call collect at register)."""
        return []

    def exposition(self) -> bytes:
        """Every series in the text format (version 0.0.4), as `GET /metrics` serves it."""
        return generate_latest(self.registry)

    def allowed(self, headers: dict, peer_ip: str) -> bool:
        """Whether a request may read /metrics: its client (the TCP peer, or the client a trusted
        proxy reports) is on loopback or is a trusted proxy, or it carries the bearer token."""
        if self.token:
            scheme, _, credentials = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
                return True
        client = self.proxies.client(peer_ip, headers)[0] or peer_ip
        try:
            if ipaddress.ip_address(client).is_loopback:
                return True
        except ValueError:
            return False
        return self.proxies.trusts(client)

    def respond(self, headers: dict, peer_ip: str) -> tuple[int, dict, bytes]:
        """(status, headers, body) for `GET /metrics`: 200 with the exposition, or 403."""
        if not self.allowed(headers, peer_ip):
            return 403, {"Content-Type": "text/plain; charset=utf-8"}, FORBIDDEN
        return 200, {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"}, self.exposition()


def of(hub) -> Metrics:
    """The metrics an engine counts into: its hub's, or a private set nobody scrapes (a test's
    stand-in hub has none)."""
    return getattr(hub, "metrics", None) or Metrics()
