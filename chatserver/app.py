"""Wiring: the ChatServer owns the engine, the registry and the transport, and joins them up."""

import logging
import threading

from chatserver import exposure, frames, tls
from chatserver.budgets import AddressShares
from chatserver.caps import ConnectionCaps, default_max_connections
from chatserver.client import TokenBucket
from chatserver.config import Config
from chatserver.dispatch import Context, dispatch_many
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
            max_reply_bytes=config.max_reply_bytes,
            caps=ConnectionCaps(config.max_connections or default_max_connections(),
                                config.max_connections_per_address),
        )
        self.shares = AddressShares(config.address_rate_burst, config.rate_per_second * config.address_rate_factor)
        try:  # after binding: a port in use is reported before the history file is touched
            self.engine = open_engine(config) if engine is None else engine
        except Exception:
            self.transport.server_close()
            raise
        self.registry = Registry(self.engine, config.limits())
        self.web = WebRoutes(self.registry.stats, self.engine.health)
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
        share = self.shares.acquire(conn.address)
        limiter = TokenBucket(self.config.rate_burst, self.config.rate_per_second, share=share)
        try:
            conn.client = self.registry.connect(conn, limiter)
        except BaseException:
            self.shares.release(conn.address)
            raise
        conn.limiter = limiter  # every frame costs (inbound.py), not only messages
        conn.context = Context(self.registry, conn.client, self.config)
        log.info("connect %s %s", conn.peer, conn.client.nick)

    def on_texts(self, conn, texts: list) -> None:
        dispatch_many(conn.context, texts)

    def on_close(self, conn) -> None:
        self.registry.disconnect(conn.client)
        self.shares.release(conn.address)

    def on_http(self, method: str, target: str, headers: dict):
        return self.web.respond(method, target, headers)

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
