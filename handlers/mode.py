"""mode: an operator makes a room moderated (only operators chat) and/or slow (seconds between a member's chats)."""

from chatserver.protocol import require_mode, require_room
from chatserver.rooms.moderation import Action

TYPE = "mode"


def handle(ctx, msg):
    moderated, slow = require_mode(msg)
    action = Action(TYPE, require_room(msg), moderated=moderated, slow=slow)
    ctx.registry.moderate(ctx.client, action, reply_id=msg.get("id"))
