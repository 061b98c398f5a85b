"""Raw text from a client -> the handler for its type; refused requests become `error` replies."""

from dataclasses import dataclass

from chatserver import frames, protocol, trace
from chatserver.config import Config
from chatserver.errors import ChatError, CloseConnection
from handlers import BATCH_HANDLERS, HANDLERS

FLOOD_FACTOR = 3  # refusals in a row, as a multiple of the burst, before we hang up


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
    batch handler (chat) go to it in one call, so their fan-out shares one write per member.
    Raises CloseConnection(1008) when a client keeps flooding after refusals."""
    counts = {}  # request type -> messages in this batch, counted into the metrics once
    try:
        _dispatch_many(ctx, raws, counts)
    finally:
        ctx.registry.metrics.received(counts)


def _dispatch_many(ctx: Context, raws: list, counts: dict) -> None:
    batch, batch_type = [], None
    for raw in raws:
        msg_id, kind = None, "invalid"
        if trace.ON:
            trace.message(raw)
        try:
            allowed = _take_token(ctx, batch, batch_type)  # every message costs a token, valid or not
            try:
                msg = protocol.decode(raw)
            except ChatError:
                if allowed:
                    raise
                msg = {}
            msg_id, kind = msg.get("id"), msg.get("type", "invalid")
            if not allowed:
                raise ChatError("rate_limited", f"Slow down: at most {ctx.client.limiter.rate:g} messages per second.")
            handler = HANDLERS.get(kind)
            if trace.ON:
                trace.handler(kind, BATCH_HANDLERS.get(kind, handler), kind in BATCH_HANDLERS)
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
            if trace.ON:
                trace.refused(exc)
            _flush(ctx, batch, batch_type)
            ctx.registry.reply(ctx.client, protocol.error(exc, msg_id))
        finally:
            counts[kind] = counts.get(kind, 0) + 1
    _flush(ctx, batch, batch_type)


def _take_token(ctx: Context, batch: list, batch_type) -> bool:
    """False when the client is over its rate; CloseConnection(1008) when it keeps on flooding."""
    limiter = ctx.client.limiter
    if limiter.take():
        return True
    ctx.registry.metrics.rate_limited.inc()
    if limiter.refused_in_a_row > FLOOD_FACTOR * limiter.burst:
        _flush(ctx, batch, batch_type)  # what was accepted before the flood still goes out
        raise CloseConnection(frames.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
    return False


def _flush(ctx: Context, batch: list, batch_type) -> None:
    if batch:
        BATCH_HANDLERS[batch_type](ctx, list(batch))
        batch.clear()
