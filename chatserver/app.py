"""Wiring: the ChatServer owns the engine, the registry and the transport, and joins them up."""

import logging
import threading

from chatserver import frames
from chatserver.client import TokenBucket
from chatserver.config import Config
from chatserver.dispatch import Context, dispatch_many
from chatserver.errors import ChatError
from chatserver.identity import CLOSE_TOKEN_EXPIRED, Identities
from chatserver.registry import Registry
from chatserver.sqlite_engine import open_engine
from chatserver.transport import RoomchatServer
from chatserver.web import WebRoutes

log = logging.getLogger("roomchat")

CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 7.4.2 (IANA registry): the server cannot take the connection now


class ChatServer:
    """A running roomchat: `serve_forever()` in the main thread or `start()` in a background one,
    then `shutdown()` (close 1001 to everyone, stop threads, close the engine)."""

    def __init__(self, config: Config, engine=None):
        self.config = config
        self.transport = RoomchatServer(
            self,
            config.host,
            config.port,
            max_message_bytes=config.max_message_bytes,
            max_outbox_bytes=config.max_outbox_bytes,
            handshake_timeout=config.handshake_timeout,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )
        try:  # after binding: a port in use is reported before the history file is touched
            self.engine = open_engine(config) if engine is None else engine
        except Exception:
            self.transport.server_close()
            raise
        self.identities = Identities(config.token_key(), config.reserved(), config.require_token, self._expired)
        self.registry = Registry(self.engine, config.limits(), self.identities)
        self.web = WebRoutes(self.registry.stats, self.engine.health)
        self._thread = None
        self._shut = threading.Lock()

    @property
    def port(self) -> int:
        return self.transport.port

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/"

    # -- transport callbacks ------------------------------------------------------------------------

    def on_handshake(self, target: str, headers: dict) -> tuple | None:
        """Before a WebSocket upgrade is accepted: None, or (status, reason, headers) to refuse it
        (401 for a bad token in `?token=`, or none with --require-token)."""
        return self.identities.refusal(target)

    def on_connect(self, conn) -> None:
        limiter = TokenBucket(self.config.rate_burst, self.config.rate_per_second)
        conn.client = None
        try:
            identity = self.identities.identity_in(conn.path)
        except ChatError as exc:  # valid at the handshake, expired a moment later
            conn.close(CLOSE_TOKEN_EXPIRED, exc.message[:100])
            return
        try:
            conn.client = self.registry.connect(conn, limiter, identity)
        except ChatError as exc:  # Redis unreachable, or a token's nick still held elsewhere
            conn.close(CLOSE_TRY_AGAIN_LATER, exc.message[:100])
            return
        conn.context = Context(self.registry, conn.client, self.config)
        log.info("connect %s %s", conn.peer, conn.client.nick)

    def on_texts(self, conn, texts: list) -> None:
        if conn.client is not None:
            dispatch_many(conn.context, texts)

    def on_close(self, conn) -> None:
        if conn.client is not None:
            self.registry.disconnect(conn.client)

    def _expired(self, client) -> None:
        """The identities' expiry thread: this client's token has expired."""
        log.info("token of %s expired", client.nick)
        client.conn.close(CLOSE_TOKEN_EXPIRED, "token expired; connect again with a new one")

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
            self.identities.stop()
            self.engine.close()
        if self._thread is not None:
            self._thread.join(timeout)
