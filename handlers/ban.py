"""ban: an operator keeps a nick out of a room for `duration` seconds (0 lifts the ban)."""

from chatserver.protocol import optional_reason, require_duration, require_nick, require_room
from chatserver.rooms.moderation import Action

TYPE = "ban"


def handle(ctx, msg):
    action = Action(TYPE, require_room(msg), require_nick(msg), optional_reason(msg), require_duration(msg))
    ctx.registry.moderate(ctx.client, action, reply_id=msg.get("id"))
