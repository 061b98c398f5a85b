"""mark: mark a room read up to a seq; the reply `mark` says where your read marker is now."""

from chatserver.protocol import require_room, require_seq

TYPE = "mark"


def handle(ctx, msg):
    ctx.registry.mark(ctx.client, require_room(msg), require_seq(msg), reply_id=msg.get("id"))
