"""rooms: list the rooms that have members, with their member counts (by name, after `after`)."""

from chatserver.protocol import optional_room

TYPE = "rooms"


def handle(ctx, msg):
    ctx.registry.list_rooms(ctx.client, after=optional_room(msg, "after"), reply_id=msg.get("id"))
