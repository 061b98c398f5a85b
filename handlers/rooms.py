"""rooms: list the rooms that have members, with their member counts."""

TYPE = "rooms"


def handle(ctx, msg):
    ctx.registry.list_rooms(ctx.client, reply_id=msg.get("id"))
