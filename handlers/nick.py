"""nick: take a new nick; everyone sharing a room with you sees the change. On a connection opened
with an invite, the first one redeems it (rooms/invites.py): the nick is then reserved for you."""

from chatserver.protocol import require_nick

TYPE = "nick"


def handle(ctx, msg):
    nick = require_nick(msg)
    if ctx.client.invite is not None and ctx.client.identity is None:
        ctx.invites.redeem(ctx.registry, ctx.client, nick, reply_id=msg.get("id"))
    else:
        ctx.registry.set_nick(ctx.client, nick, reply_id=msg.get("id"))
