"""typing: tell a room's other members you are typing; no reply, at most one per 3 s counts."""

from chatserver.protocol import require_room

TYPE = "typing"


def handle(ctx, msg):
    ctx.registry.typing(ctx.client, require_room(msg))
