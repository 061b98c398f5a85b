"""Raw text from a client -> the handler for its type; refused requests become `error` replies."""

from dataclasses import dataclass

from chatserver import frames, protocol
from chatserver.config import Config
from chatserver.errors import ChatError, CloseConnection
from handlers import BATCH_HANDLERS, HANDLERS


@dataclass
class Context:
    """What a handler may use: the registry, the client that sent the request, the settings."""

    registry: object
    client: object
    config: Config


def dispatch(ctx: Context, raw: str) -> None:
    """Handle one message. Raises CloseConnection(1008) when a client keeps flooding after refusals."""
    dispatch_many(ctx, [raw])


def dispatch_many(ctx: Context, raws: list) -> None:
    """Handle messages that arrived together, in order. Consecutive requests of a type with a
    batch handler (chat) go to it in one call, so their fan-out shares one write per member."""
    batch, batch_type = [], None
    for raw in raws:
        ctx.client.pace()  # its earlier replies must leave before it is answered again (streams.Outbox)
        msg_id = None
        try:
            allowed = _take_token(ctx, batch, batch_type)  # every message costs a token, valid or not
            try:
                msg = protocol.decode(raw)
            except ChatError:
                if allowed:
                    raise
                msg = {}
            msg_id = msg.get("id")
            if not allowed:
                raise _rate_limited(ctx.client.limiter)
            kind = msg["type"]
            handler = HANDLERS.get(kind)
            if handler is None:
                known = ", ".join(sorted(HANDLERS))
                raise ChatError("unknown_type", f"Unknown message type {kind[:40]!r}; known types: {known}.")
            if kind in BATCH_HANDLERS:
                if kind != batch_type:
                    _flush(ctx, batch, batch_type)
                batch.append(msg)
                batch_type = kind
                continue
            _flush(ctx, batch, batch_type)
            handler(ctx, msg)
        except ChatError as exc:
            _flush(ctx, batch, batch_type)
            ctx.registry.reply(ctx.client, protocol.error(exc, msg_id))
    _flush(ctx, batch, batch_type)


def _take_token(ctx: Context, batch: list, batch_type) -> bool:
    """False when the client is over its rate; CloseConnection(1008) when it keeps on flooding."""
    limiter = ctx.client.limiter
    if limiter.take():
        return True
    if limiter.flooding:
        _flush(ctx, batch, batch_type)  # what was accepted before the flood still goes out
        raise CloseConnection(frames.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
    return False


def _rate_limited(limiter) -> ChatError:
    if limiter.refused_by_share:
        share = limiter.share
        return ChatError("rate_limited", f"Slow down: connections from your address may send at most "
                                         f"{share.rate:g} messages per second together.")
    return ChatError("rate_limited", f"Slow down: at most {limiter.rate:g} messages per second.")


def _flush(ctx: Context, batch: list, batch_type) -> None:
    if batch:
        BATCH_HANDLERS[batch_type](ctx, list(batch))
        batch.clear()
