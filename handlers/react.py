"""react: toggle your emoji reaction on a chat; every member gets the `react` event (`on`: reacting now)."""

from chatserver.protocol import require_emoji, require_room, require_seq

TYPE = "react"


def handle(ctx, msg):
    room, seq, emoji = require_room(msg), require_seq(msg), require_emoji(msg)
    ctx.registry.amend(ctx.client, TYPE, room, seq, reply_id=msg.get("id"), emoji=emoji)
