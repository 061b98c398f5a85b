"""chat: say something in a room; every member, the sender included, gets it with its seq."""

from chatserver.protocol import require_room, require_text

TYPE = "chat"


def handle(ctx, msg):
    room = require_room(msg)
    text = require_text(msg, ctx.config.max_text_chars)
    ctx.registry.chat(ctx.client, room, text, reply_id=msg.get("id"))
