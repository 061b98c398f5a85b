"""ping: an application-level liveness check; the reply is `pong`."""

from chatserver import protocol

TYPE = "ping"


def handle(ctx, msg):
    ctx.registry.reply(ctx.client, protocol.with_id({"type": "pong"}, msg.get("id")))
