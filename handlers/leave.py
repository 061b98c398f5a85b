"""leave: quit a room; the others see a presence `leave`."""

from chatserver.protocol import require_room

TYPE = "leave"


def handle(ctx, msg):
    ctx.registry.leave(ctx.client, require_room(msg), reply_id=msg.get("id"))
