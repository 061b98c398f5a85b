"""dm: a direct message to one connected nick; the sender gets the same event back."""

from chatserver.protocol import require_nick, require_text

TYPE = "dm"


def handle(ctx, msg):
    to = require_nick(msg, "to")
    text = require_text(msg, ctx.config.max_text_chars)
    ctx.registry.dm(ctx.client, to, text, reply_id=msg.get("id"))
