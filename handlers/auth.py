"""auth: present a token (or a fresh one, before the current one expires); the reply is `auth`."""

from chatserver.protocol import require_str

TYPE = "auth"


def handle(ctx, msg):
    ctx.registry.authenticate(ctx.client, require_str(msg, "token"), reply_id=msg.get("id"))
