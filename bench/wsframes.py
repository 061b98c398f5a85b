"""The client half of RFC 6455 that the load generator needs, and nothing more.

A general WebSocket client library spends more CPU per received frame than the server under test
spends per delivery, so the load generator does its own framing: it builds masked client frames,
finds the bounds of unmasked server frames in a receive buffer without copying, and checks the
opening handshake. Everything here is pure (bytes in, bytes out) and imports only the stdlib.
"""

import base64
import hashlib
import os

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(Exception):
    """The server did not answer the upgrade request with a valid 101."""


def handshake_request(host, port, path="/"):
    """Return (request bytes, expected Sec-WebSocket-Accept value) for one connection."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), port, key)
    )
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return request, accept


def check_handshake(head, accept):
    """Raise HandshakeError unless `head` (the response up to the blank line) accepts the upgrade."""
    status, _, rest = head.partition(b"\r\n")
    if b" 101 " not in status + b" ":
        raise HandshakeError(status.decode("latin-1"))
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip() == accept:
                return
            raise HandshakeError("wrong Sec-WebSocket-Accept")
    raise HandshakeError("no Sec-WebSocket-Accept")


def new_mask():
    """A masking key. Clients must mask every frame; the key only has to be there, so one per
    connection is enough for a load generator."""
    return os.urandom(4)


def frame_header(opcode, length):
    """Header of a final, masked client frame carrying `length` payload bytes (key not included)."""
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length))
    if length < 65536:
        return bytes((0x80 | opcode, 0xFE)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 0xFF)) + length.to_bytes(8, "big")


def mask_bytes(data, mask, offset=0):
    """XOR `data` with the masking key as if it sat at `offset` in the payload. One big-integer
    XOR instead of a Python loop per byte; the offset lets a caller mask a constant part once."""
    n = len(data)
    if not n:
        return b""
    shift = offset % 4
    key = ((mask[shift:] + mask[:shift]) * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_frame(opcode, payload, mask):
    """One final, masked client frame."""
    return frame_header(opcode, len(payload)) + mask + mask_bytes(payload, mask)


def frame_bounds(buf, pos, n):
    """Locate the unmasked server frame that starts at buf[pos] (n == len(buf)).

    Returns (payload_start, frame_end). When the frame is not complete yet, payload_start is -1 and
    frame_end is the length the buffer must reach before calling again. A server frame is never
    masked (RFC 6455 5.1), so a set mask bit returns (-2, 0) and the caller closes.
    """
    if n - pos < 2:
        return -1, pos + 2
    b1 = buf[pos + 1]
    if b1 & 0x80:
        return -2, 0
    length = b1 & 0x7F
    if length < 126:
        start = pos + 2
    elif length == 126:
        start = pos + 4
        if n < start:
            return -1, start
        length = int.from_bytes(buf[pos + 2 : start], "big")
    else:
        start = pos + 10
        if n < start:
            return -1, start
        length = int.from_bytes(buf[pos + 2 : start], "big")
    end = start + length
    if end > n:
        return -1, end
    return start, end
