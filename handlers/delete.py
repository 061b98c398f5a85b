"""delete: remove your own chat within the edit window (an operator: any chat); every member gets the `delete` event."""

from chatserver.protocol import require_room, require_seq

TYPE = "delete"


def handle(ctx, msg):
    ctx.registry.amend(ctx.client, TYPE, require_room(msg), require_seq(msg), reply_id=msg.get("id"))
