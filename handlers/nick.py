"""nick: take a new nick; everyone sharing a room with you sees the change."""

from chatserver.protocol import require_nick

TYPE = "nick"


def handle(ctx, msg):
    ctx.registry.set_nick(ctx.client, require_nick(msg), reply_id=msg.get("id"))
