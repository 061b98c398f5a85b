"""Raw text from a client -> one handler call; refused requests become `error` replies."""

from dataclasses import dataclass

from chatserver import frames, protocol
from chatserver.config import Config
from chatserver.errors import ChatError, FrameError
from handlers import HANDLERS

FLOOD_FACTOR = 3  # refusals in a row, as a multiple of the burst, before we hang up


@dataclass
class Context:
    """What a handler may use: the registry, the client that sent the request, the settings."""

    registry: object
    client: object
    config: Config


def dispatch(ctx: Context, raw: str) -> None:
    """Handle one message. Raises FrameError(1008) when a client keeps flooding after refusals."""
    msg_id = None
    try:
        msg = protocol.decode(raw)
        msg_id = msg.get("id")
        handler = HANDLERS.get(msg["type"])
        if handler is None:
            known = ", ".join(sorted(HANDLERS))
            raise ChatError("unknown_type", f"Unknown message type {msg['type'][:40]!r}; known types: {known}.")
        limiter = ctx.client.limiter
        if not limiter.take():
            if limiter.refused_in_a_row > FLOOD_FACTOR * limiter.burst:
                raise FrameError(frames.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
            raise ChatError("rate_limited", f"Slow down: at most {limiter.rate:g} messages per second.")
        handler(ctx, msg)
    except ChatError as exc:
        ctx.registry.reply(ctx.client, protocol.error(exc, msg_id))
