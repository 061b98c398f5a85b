"""Raw text from a client -> the handler for its type; refused requests become `error` replies."""

import logging
from dataclasses import dataclass

from chatserver import protocol
from chatserver.config import Config
from chatserver.errors import ChatError, CloseConnection
from chatserver.ops import logs, trace
from chatserver.wire import frames


@dataclass
class Context:
    """What a handler may use: the registry, the client that sent the request, the settings,
    and the server's invites (rooms/invites.Invites, or None)."""

    registry: object
    client: object
    config: Config
    invites: object = None


class Dispatcher:
    """Raw text from a client -> the handler for its type.

    `handlers`: {type: handle(ctx, msg)}; `batch_handlers`: {type: handle_many(ctx, msgs)} for a
    type whose consecutive requests are handled in one call. The app passes the tables of the
    top-level `handlers` package, so chatserver never imports it (imports run one way).
    """

    def __init__(self, handlers: dict, batch_handlers: dict):
        self._handlers = handlers
        self._batch_handlers = batch_handlers

    def dispatch(self, ctx: Context, raws: list) -> None:
        """Handle messages that arrived together, in order. Consecutive requests of a type with a
        batch handler (chat) go to it in one call, so their fan-out shares one write per member.
        A refused request gets an `error` reply with its `id`; the messages are counted by type.

        Raises CloseConnection(1008) when the client keeps sending after 3 x burst refusals."""
        counts: dict = {}  # request type -> messages in this call, counted into the metrics once
        try:
            self._dispatch(ctx, raws, counts)
        finally:
            ctx.registry.metrics.received(counts)

    def _dispatch(self, ctx: Context, raws: list, counts: dict) -> None:
        batch: list = []
        batch_type = None
        debug = logs.requests.isEnabledFor(logging.DEBUG)  # one check per call; off: no line built
        for raw in raws:
            ctx.client.pace()  # its earlier replies must leave before it is answered again (streams.Outbox)
            msg_id, kind = None, "invalid"
            if trace.ON:
                trace.message(raw)
            try:
                allowed = self._take_token(ctx, batch, batch_type)  # every message costs a token
                try:
                    msg = protocol.decode(raw)
                except ChatError:
                    if allowed:
                        raise
                    msg = {}
                msg_id, kind = msg.get("id"), msg.get("type", "invalid")
                if not allowed:
                    raise _rate_limited(ctx.client.limiter)
                handler = self._handlers.get(kind)
                if debug:
                    logs.request(ctx.client, kind, msg)
                if trace.ON:
                    trace.handler(kind, self._batch_handlers.get(kind, handler), kind in self._batch_handlers)
                if handler is None:
                    known = ", ".join(sorted(self._handlers))
                    raise ChatError("unknown_type", f"Unknown message type {kind[:40]!r}; known types: {known}.")
                if kind in self._batch_handlers:
                    if kind != batch_type:
                        self._flush(ctx, batch, batch_type)
                    batch.append(msg)
                    batch_type = kind
                    continue
                self._flush(ctx, batch, batch_type)
                if not ctx.registry.settle(ctx.client):  # the one place a client's order is kept
                    return  # gone meanwhile
                handler(ctx, msg)
            except ChatError as exc:
                if trace.ON:
                    trace.refused(exc)
                if debug:
                    logs.request(ctx.client, kind, msg if allowed else {}, exc.code)
                self._flush(ctx, batch, batch_type)
                ctx.registry.reply(ctx.client, protocol.error(exc, msg_id))
            finally:
                counts[kind] = counts.get(kind, 0) + 1
        self._flush(ctx, batch, batch_type)

    def _take_token(self, ctx: Context, batch: list, batch_type) -> bool:
        """False when the client is over its rate; CloseConnection(1008) when it keeps on flooding."""
        limiter = ctx.client.limiter
        if limiter.take():
            return True
        ctx.registry.metrics.rate_limited.inc()
        if limiter.flooding:
            self._flush(ctx, batch, batch_type)  # what was accepted before the flood still goes out
            raise CloseConnection(frames.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
        return False

    def _flush(self, ctx: Context, batch: list, batch_type) -> None:
        if batch:
            self._batch_handlers[batch_type](ctx, list(batch))
            batch.clear()


def _rate_limited(limiter) -> ChatError:
    if limiter.refused_by_share:
        share = limiter.share
        return ChatError("rate_limited", f"Slow down: connections from your address may send at most "
                                         f"{share.rate:g} messages per second together.")
    return ChatError("rate_limited", f"Slow down: at most {limiter.rate:g} messages per second.")
