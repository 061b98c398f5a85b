"""join: enter a room; reply `joined` with members and recent history (or all since `after`)."""

from chatserver.protocol import optional_seq, require_room

TYPE = "join"


def handle(ctx, msg):
    ctx.registry.join(ctx.client, require_room(msg), after=optional_seq(msg, "after"), reply_id=msg.get("id"))
