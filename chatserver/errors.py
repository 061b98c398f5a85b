"""The ways a client can be wrong: a request we refuse, a connection we close, a handshake we refuse."""


class ChatError(Exception):
    """A request was refused; the client gets an `error` event and the connection stays open.
    `fields` are extra keys of that event (`retry_after`)."""

    def __init__(self, code: str, message: str, **fields):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


class CloseConnection(Exception):
    """The connection must end: the peer broke RFC 6455, went over a limit or kept flooding.

    The transport sends a close frame with `close_code` (RFC 6455 7.4.1) and `reason`, then stops
    reading (RFC 6455 7.1.7, "Fail the WebSocket Connection").
    """

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
