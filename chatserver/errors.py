"""The two ways a client can be wrong: a request we refuse, or a connection we close."""


class ChatError(Exception):
    """A request was refused; the client gets an `error` event and the connection stays open.
    `fields` are extra keys of that event (`retry_after`)."""

    def __init__(self, code: str, message: str, **fields):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


class FrameError(Exception):
    """The peer broke RFC 6455 (or a limit); the connection is closed with `close_code`."""

    def __init__(self, close_code: int, reason: str):
        super().__init__(f"{close_code} {reason}")
        self.close_code = close_code
        self.reason = reason


class HandshakeError(Exception):
    """The opening HTTP request was refused; the client gets `status` and the socket closes."""

    def __init__(self, status: int, reason: str, headers: dict | None = None):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or {}
