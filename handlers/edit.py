"""edit: change the text of your own chat within the edit window; every member gets the `edit` event."""

from chatserver.protocol import require_room, require_seq, require_text

TYPE = "edit"


def handle(ctx, msg):
    room, seq = require_room(msg), require_seq(msg)
    text = require_text(msg, ctx.config.max_text_chars)
    ctx.registry.amend(ctx.client, TYPE, room, seq, reply_id=msg.get("id"), text=text)
