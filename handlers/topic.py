"""topic: an operator sets (or, with "", clears) a room's topic; members get the `topic` event."""

from chatserver.moderation import Action
from chatserver.protocol import require_room, require_topic

TYPE = "topic"


def handle(ctx, msg):
    action = Action(TYPE, require_room(msg), text=require_topic(msg))
    ctx.registry.moderate(ctx.client, action, reply_id=msg.get("id"))
