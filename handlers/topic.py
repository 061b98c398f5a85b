"""topic: an operator sets (or, with "", clears) a room's topic; members get the `topic` event."""

from chatserver.protocol import require_room, require_topic
from chatserver.rooms.moderation import Action

TYPE = "topic"


def handle(ctx, msg):
    action = Action(TYPE, require_room(msg), text=require_topic(msg))
    ctx.registry.moderate(ctx.client, action, reply_id=msg.get("id"))
