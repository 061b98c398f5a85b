"""kick: an operator takes a member out of a room, with an optional reason; members see who did it."""

from chatserver.protocol import optional_reason, require_nick, require_room
from chatserver.rooms.moderation import Action

TYPE = "kick"


def handle(ctx, msg):
    action = Action(TYPE, require_room(msg), require_nick(msg), optional_reason(msg))
    ctx.registry.moderate(ctx.client, action, reply_id=msg.get("id"))
