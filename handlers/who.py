"""who: the nicks in a room (any room; an empty list when nobody is there)."""

from chatserver.protocol import require_room

TYPE = "who"


def handle(ctx, msg):
    ctx.registry.who(ctx.client, require_room(msg), reply_id=msg.get("id"))
