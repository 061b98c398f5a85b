"""Wiring: the ChatServer owns the engine, the registry and the transport, and joins them up."""

import logging
import threading

from chatserver import exposure, frames, tls, trace
from chatserver.client import TokenBucket
from chatserver.config import Config
from chatserver.dispatch import Context, dispatch_many
from chatserver.metrics import Metrics, close_label
from chatserver.proxies import TrustedProxies
from chatserver.registry import Registry
from chatserver.sqlite_engine import open_engine
from chatserver.transport import WebSocketTransport
from chatserver.web import WebRoutes

log = logging.getLogger("roomchat")


class ChatServer:
    """A running roomchat: `serve_forever()` in the main thread or `start()` in a background one,
    then `shutdown()` (close 1001 to everyone, stop threads, close the engine)."""

    def __init__(self, config: Config, engine=None):
        self.config = config
        # TLS files and the Host/Origin rules first: a mistake there must not leave the engine open.
        ssl_context = tls.server_context(config.certfile, config.keyfile) if config.certfile else None
        policy = exposure.policy(config.allowed_hosts, config.allow_origin, config.host)
        self.metrics = Metrics(config.metrics_token, TrustedProxies(config.trusted_proxy))
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
            proxies=TrustedProxies(config.trusted_proxy),
            ssl_context=ssl_context,
        )
        try:  # after binding: a port in use is reported before the history file is touched
            self.engine = open_engine(config) if engine is None else engine
        except Exception:
            self.transport.server_close()
            raise
        self.registry = Registry(self.engine, config.limits(), self.metrics)
        self.metrics.watch(self.registry.stats, self.transport.housekeeper.totals)
        self.web = WebRoutes(self.registry.stats, self.engine.health, metrics=self.metrics.respond)
        self._thread = None
        self._shut = threading.Lock()

    @property
    def port(self) -> int:
        return self.transport.port

    @property
    def url(self) -> str:
        return f"{'wss' if self.config.certfile else 'ws'}://{self.config.host}:{self.port}/"

    # -- transport callbacks ------------------------------------------------------------------------

    def on_connect(self, conn) -> None:
        limiter = TokenBucket(self.config.rate_burst, self.config.rate_per_second)
        if trace.ON:
            trace.bind(conn)  # this is the connection's own thread: its trace lines carry its nick
        conn.client = self.registry.connect(conn, limiter)
        conn.context = Context(self.registry, conn.client, self.config)
        self.metrics.opened.inc()
        log.info("connect %s %s", conn.peer, conn.client.nick)

    def on_texts(self, conn, texts: list) -> None:
        dispatch_many(conn.context, texts)

    def on_close(self, conn, close_code: int) -> None:
        self.registry.disconnect(conn.client)
        self.metrics.closed.labels(close_label(close_code)).inc()  # after its presence `leave`s

    def on_refused(self, status: int) -> None:
        self.metrics.refused.labels(str(status)).inc()

    def on_http(self, request, peer_ip: str):
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
            self.transport.close_all(frames.CLOSE_GOING_AWAY, "server shutting down", timeout)
            self.engine.close()
        if self._thread is not None:
            self._thread.join(timeout)
