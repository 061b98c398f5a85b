"""Wiring: the ChatServer owns the engine, the registry and the transport, and joins them up.

Threads, and what each runs:
- main: roomchat.py's `serve`, which waits for SIGINT/SIGTERM and calls `shutdown`.
- accept (`roomchat-accept`): `WebSocketTransport.serve`, socketserver's accept loop; it starts
  one thread per connection, or answers 503 at once (transport/caps.py: connection caps, descriptors or
  threads run out).
- one per connection: `transport.Connection.handle`: the TLS and opening handshakes, then reads
  frames and calls `on_connect`, `on_texts` (dispatch -> handlers -> registry) and `on_close`.
  Requests run here, and so does the fan-out of the memory engine's chats. Before each request it
  waits (`Connection.pace`, transport/server.py) while its client's own replies pile up unread.
  A plain HTTP request is answered here too (ops/web.py; ops/api.py, whose post waits up to
  30 s for its chat to be stored: rooms/posts.py).
- housekeeper (transport/housekeeper.py): handshake deadlines, pings, delayed aborts, `on_close` for
  connections dropped as too slow.
- flusher (streams.Flusher): finishes the writes the kernel could not take at once (epoll).
- SQLite engine: the writer (`roomchat-store`: group commits, then `hub.deliver`; retention) and
  the checkpointer (`roomchat-checkpoint`: WAL checkpoints).
- identity expiry (`roomchat-expiry`, rooms/identity.py): closes connections whose token expired (4001).
- Redis engine: the listener (`roomchat-redis-listener`: the subscription, catch-ups, then
  `registry.deliver`/`deliver_dm`; a request from another process, to let go of a nick or hand
  out kept DMs, runs on a thread of its own), the heartbeat (`roomchat-redis-heartbeat`: the lease
  and nick claims, writes waiting for Redis, reaping dead processes, `ClusterRegistry.retake`) and,
  on a Redis Cluster, the repair (`roomchat-redis-repair`: room counts and this process's
  membership index put right, `ClusterRegistry.memberships`).

Locks, each guarding one thing, none reentrant, taken only in this order:
  MemoryEngine._lock or RedisEngine._sub_lock -> Registry._lock -> Outbox._lock -> the leaves
- `MemoryEngine._lock`: its history and seqs; held while it delivers, so a room's chats reach
  the registry in seq order. `RedisEngine._sub_lock`: (un)subscribing; asks the registry `has_room`.
- `Registry._lock` (rooms/registry.py): clients, nicks, rooms and members, delivered seqs,
  resume tokens, the write batch; `Registry._settled` is a condition on it. Never held while
  calling an engine, and the engines call the registry with none of their own locks held,
  except the two above.
- `Outbox._lock` (one per connection): its queue, byte counts and flags (transport/streams.py); `pace`
  waits on a condition of it.
- Leaves: `TlsSession._lock` (the TLS state), `ConnectionState._lock` (a connection's state and
  close reason), `Housekeeper._lock` (connections, deadlines, aborts), `WebSocketTransport.
  _accepting`, wire/exposure.py's refusal log, `SqliteEngine._lock` (seqs, the failing flag, the
  queue's order), `RedisEngine._lock` (delivered places, nick claims, subscription
  confirmations, waiting writes, the lease), `LocalRules._rules_lock` (topics, bans, mutes, modes,
  invite uses, reservations), `LocalPersonal._personal_lock` (engines/personal.py: read markers and
  DMs that wait; the SQLite engine writes them to its file under it), transport/caps.py's
  `ConnectionCaps._lock` and `BurstLog._lock`, rooms/budgets.py's `AddressShares._lock`, each
  `SharedTokenBucket._lock` and `RateBook._lock`, rooms/posts.py's `Posts._lock` and
  `Posters._lock` (and each `Poster.lock`, held only around its slow-mode check), `ReaderPool._cond`
  (engines/sqlite_readers.py), `Identities._cond` (expiry times). `Registry._builders` (a
  semaphore: history replies built at once) and `Registry._searchers` (searches at once) are
  taken before the registry's lock, never while holding it, and never one inside the other.
What relies on the GIL instead: floats and strings written by one thread and read by another
where a stale read is harmless: a connection's `last_seen`/`ping_sent_at` (a ping moves by one
tick), the Flusher's fd table, the engines' `health()` reasons; a client's `bound` bans and mutes
(written under the registry's lock, read by its own thread at a chat or join) and the SQLite writer's
last committed seq of a room (read where a moderation event is kept for transcripts).
"""

import ipaddress
import logging
import socket
import threading
from urllib.parse import parse_qs, urlsplit

from chatserver.config import Config
from chatserver.engines.sqlite import open_engine
from chatserver.errors import ChatError
from chatserver.ops import logs, trace
from chatserver.ops.api import Api
from chatserver.ops.metrics import Metrics, close_label
from chatserver.ops.web import WebRoutes
from chatserver.protocol import CloseCode
from chatserver.rooms.budgets import AddressShares, RateBook
from chatserver.rooms.client import TokenBucket
from chatserver.rooms.cluster import ClusterRegistry
from chatserver.rooms.dispatch import Context, Dispatcher
from chatserver.rooms.identity import Identities
from chatserver.rooms.invites import Invites
from chatserver.rooms.registry import Registry
from chatserver.transport import tls
from chatserver.transport.caps import ConnectionCaps, default_max_connections
from chatserver.transport.server import WebSocketTransport
from chatserver.wire import exposure
from chatserver.wire.handshake import SECURITY_HEADERS, TEXT
from chatserver.wire.proxies import TrustedProxies

log = logging.getLogger("roomchat")


def routed_address(family: int, towards: str) -> str | None:
    """This machine's source address towards `towards` (an IP of `family`), as the routing table
    picks it: connecting a UDP socket sends nothing. None without a route, or for a loopback or
    link-local address (no use to another machine)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((towards, 9))
            found = ipaddress.ip_address(probe.getsockname()[0].split("%")[0])
    except OSError:
        return None
    return None if found.is_loopback or found.is_link_local else str(found)


class ChatServer:
    """A running roomchat: `serve_forever()` in the main thread or `start()` in a background one,
    then `shutdown()` (close 1001 to everyone, stop threads, close the engine)."""

    def __init__(self, config: Config, dispatcher: Dispatcher, engine=None):
        """`dispatcher`: the handler table (roomchat.py builds it from the top-level `handlers`
        package, which chatserver never imports); `engine`: one already made (tests), else the
        one `config` names. Raises OSError (port in use), EngineError, TlsSetupError."""
        self.config = config
        # TLS files and the Host/Origin rules first: a mistake there must not leave the engine open.
        ssl_context = tls.server_context(config.certfile, config.keyfile) if config.certfile else None
        policy = exposure.policy(config.allowed_hosts, config.allow_origin, config.host)
        proxies = TrustedProxies(config.trusted_proxy, config.forwarded_header)
        self.metrics = Metrics(config.metrics_token, proxies)
        self.transport = WebSocketTransport(
            self,
            config.host,
            config.port,
            max_message_bytes=config.max_message_bytes,
            max_outbox_bytes=config.max_outbox_bytes,
            handshake_timeout=config.handshake_timeout,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            policy=policy,
            proxies=proxies,
            ssl_context=ssl_context,
            max_reply_bytes=config.max_reply_bytes,
            caps=ConnectionCaps(config.max_connections or default_max_connections(),
                                config.max_connections_per_address),
        )
        self.shares = AddressShares(config.address_rate_burst, config.rate_per_second * config.address_rate_factor)
        try:  # after binding: a port in use is reported before the history file is touched
            # The token secret before the engine too: a file that cannot be read (OSError) must
            # not leave the history file open and locked behind it.
            key = config.token_key()
            self.identities = Identities(key, config.reserved(), config.require_token, self._expired)
            self.engine = open_engine(config) if engine is None else engine
        except Exception:
            self.transport.server_close()
            raise
        registry = ClusterRegistry if self.engine.cluster else Registry
        self.registry = registry(self.engine, config.limits(), self.identities, self.metrics,
                                 typing_max_members=config.typing_max_members, offline_dms=config.offline_dms)
        self.invites = Invites(key, self.engine)
        self.metrics.watch(self.registry.stats, self.transport.housekeeper.totals)
        self.web = WebRoutes(self.registry.stats, self.engine.health, metrics=self.metrics.respond)
        self.api = Api(self.registry, self.identities, RateBook(config.address_rate_burst, self.shares.rate),
                       RateBook(config.rate_burst, config.rate_per_second), config.max_text_chars)
        self.dispatcher = dispatcher
        self._thread = None
        self._shut = threading.Lock()

    @property
    def port(self) -> int:
        return self.transport.port

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'wss' if self.config.certfile else 'ws'}://{host}:{self.port}/"

    def page_urls(self) -> tuple[str, str | None]:
        """(the chat page's URL on this machine, what to open from other machines). Bound to one
        address: that address's URL, and None. Bound to every interface (0.0.0.0, ::): the URL on
        127.0.0.1, and the URL on this machine's address on its default route (IPv4; with `::`,
        else IPv6), or a hint where there is no route or the Host check (`--allowed-hosts`)
        would refuse that address."""
        scheme = "https" if self.config.certfile else "http"
        if self.config.host not in exposure.WILDCARD_BINDS:
            return self.url.replace("ws", "http", 1), None
        here = f"{scheme}://127.0.0.1:{self.port}/"
        address = routed_address(socket.AF_INET, "192.0.2.1")  # RFC 5737's TEST-NET-1
        if address is None and self.config.host == "::":
            address = routed_address(socket.AF_INET6, "2001:db8::1")  # RFC 3849's documentation prefix
        if address is None:
            return here, f"{scheme}://<this machine's address>:{self.port}/ (`hostname -I` lists them)"
        name = f"[{address}]" if ":" in address else address
        if not self.transport.policy.check_host.answers(name, self.port):
            return here, f"{scheme}://{name}:{self.port}/ once --allowed-hosts lists {name}"
        return here, f"{scheme}://{name}:{self.port}/"

    # -- transport callbacks ------------------------------------------------------------------------

    def on_handshake(self, target: str, headers: dict) -> tuple | None:
        """Before a WebSocket upgrade is accepted: None, or (status, reason, headers) to refuse it
        (401 for a bad token in `?token=`, or none with --require-token; for an invalid, expired or
        used-up `?invite=`)."""
        query = parse_qs(urlsplit(target).query)
        if "invite" in query and "token" not in query:  # a usable invite stands in for a token (--require-token too)
            return self.invites.refusal(target)
        return self.identities.refusal(target)

    def on_connect(self, conn) -> None:
        if trace.ON:
            trace.bind(conn)  # this is the connection's own thread: its trace lines carry its nick
        conn.client = None
        try:
            identity = self.identities.identity_in(conn.path)
            invite = None if identity is not None else self.invites.invite_in(conn.path)
        except ChatError as exc:  # valid at the handshake, expired a moment later
            conn.close(CloseCode.TOKEN_EXPIRED, exc.message[:100])
            return
        resume = parse_qs(urlsplit(conn.path).query).get("resume", [None])[0]
        share = self.shares.acquire(conn.address)
        limiter = TokenBucket(self.config.rate_burst, self.config.rate_per_second, share=share)
        try:
            conn.client = self.registry.connect(conn, limiter, identity, resume=resume)
        except ChatError as exc:  # Redis unreachable, or a token's nick still held elsewhere
            self.shares.release(conn.address)
            conn.close(CloseCode.TRY_AGAIN_LATER, exc.message[:100])
            return
        except BaseException:
            self.shares.release(conn.address)
            raise
        conn.limiter = conn.client.limiter  # every frame costs (Connection.read_messages), not only messages
        if invite is not None:  # set before its first request: its `nick` redeems it
            conn.client.invite = invite
        conn.context = Context(self.registry, conn.client, self.config, self.invites)
        self.metrics.opened.inc()
        nick = conn.client.nick
        log.info("connect %s %s", conn.peer, nick, extra=logs.context(peer=conn.peer, nick=nick))

    def on_texts(self, conn, texts: list) -> None:
        if conn.client is not None and conn.client.conn is conn:  # else: resumed on a new connection
            self.dispatcher.dispatch(conn.context, texts)

    def on_close(self, conn, close_code: int) -> None:
        if conn.client is not None:
            self.registry.disconnect(conn.client, conn)
            self.shares.release(conn.address)
        self.metrics.closed.labels(close_label(close_code)).inc()  # after its presence `leave`s

    def _expired(self, client) -> None:
        """The identities' expiry thread: this client's token has expired."""
        log.info("token of %s expired", client.nick, extra=logs.context(peer=client.conn.peer, nick=client.nick))
        client.conn.close(CloseCode.TOKEN_EXPIRED, "token expired; connect again with a new one")

    def on_refused(self, status: int) -> None:
        self.metrics.refused.labels(str(status)).inc()

    def on_http(self, request, peer_ip: str, address: str = "", refused=None):
        """A plain HTTP request (its body read): `/api/` goes to the HTTP API (ops/api.py), the rest
        to ops/web.py. `address`: the client's (the one a trusted proxy reports); `refused`: the
        HandshakeError when its body was refused (400, 411, 413)."""
        if self.api.handles(request.target):
            return self.api.respond(request, address or peer_ip, refused)
        if refused is not None:
            return refused.status, {**SECURITY_HEADERS, "Content-Type": TEXT, **refused.headers}, \
                refused.reason.encode() + b"\n"
        return self.web.respond(request.method, request.target, request.headers, peer_ip)

    # -- life cycle ------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.transport.serve()

    def start(self) -> "ChatServer":
        self._thread = threading.Thread(target=self.serve_forever, name="roomchat-accept", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 1.5) -> None:
        """Stop accepting, send close 1001 to every client, wait for them at most `timeout`."""
        with self._shut:
            self.transport.stop_accepting()
            self.transport.close_all(CloseCode.GOING_AWAY, "server shutting down", timeout)
            self.identities.stop()
            self.engine.close()
        if self._thread is not None:
            self._thread.join(timeout)
