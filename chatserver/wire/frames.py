"""RFC 6455 framing with no sockets: bytes in, events out, and server frames out.

`FrameReader` pulls bytes through a `read_exact(n)` callable, so the same code runs on a
connection's `transport.streams.SocketReader` in production and on a `BytesIO` in the unit tests.
Every rule violation raises `CloseConnection(close_code, reason)` (a `protocol.CloseCode`); the
caller sends that close code and stops reading.
"""

import codecs
import struct
from dataclasses import dataclass

from chatserver.errors import CloseConnection
from chatserver.ops import trace
from chatserver.protocol import CloseCode

try:  # websockets' C helper: about 100x faster than the pure-Python XOR on a 32 KiB payload
    from websockets.speedups import apply_mask
except ImportError:  # platforms where websockets ships without its C extension
    apply_mask = None

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
KNOWN_OPCODES = {OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG}

MAX_CONTROL_PAYLOAD = 125
MAX_FRAGMENTS = 1024  # frames per message: empty continuation frames must not go on for ever

@dataclass(frozen=True)
class Text:
    """A complete text message (all fragments joined, UTF-8 checked)."""

    text: str


@dataclass(frozen=True)
class Ping:
    payload: bytes


@dataclass(frozen=True)
class Pong:
    payload: bytes


@dataclass(frozen=True)
class Close:
    """The peer's close frame; `code` is None when it sent no status."""

    code: int | None
    reason: str


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR the payload with the 4-byte mask (RFC 6455 5.3)."""
    if apply_mask is not None:
        return apply_mask(payload, mask)
    return unmask_python(payload, mask)


def unmask_python(payload: bytes, mask: bytes) -> bytes:
    """The same XOR done as one big integer operation: no Python loop per byte."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


_HEAD = struct.Struct("!BB").pack  # compiled once: a frame is built for every event sent
_HEAD16 = struct.Struct("!BBH").pack
_HEAD64 = struct.Struct("!BBQ").pack


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked server frame (servers never mask, RFC 6455 5.1): the header's
    payload length in 7 bits, or 126 and 16 bits, or 127 and 64 bits (5.2)."""
    n = len(payload)
    if n < 126:
        return _HEAD(0x80 | opcode, n) + payload
    if n < 65536:
        return _HEAD16(0x80 | opcode, 126, n) + payload
    return _HEAD64(0x80 | opcode, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame around an already UTF-8 encoded payload (encode_frame's, without its call:
    one per event delivered)."""
    n = len(payload)
    if n < 126:
        return _HEAD(0x81, n) + payload
    if n < 65536:
        return _HEAD16(0x81, 126, n) + payload
    return _HEAD64(0x81, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control payload."""
    body = struct.pack("!H", code) + reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    return encode_frame(OP_CLOSE, body)


def frame_ready(buf: bytes, pos: int) -> bool:
    """True when buf[pos:] starts with a whole frame that ends a message (FIN set), so reading
    the next event cannot block. A first fragment is not enough: its rest may be far off."""
    avail = len(buf) - pos
    if avail < 2 or not buf[pos] & 0x80:
        return False
    b2 = buf[pos + 1]
    length, head = b2 & 0x7F, 2 + (4 if b2 & 0x80 else 0)
    if length == 126:
        if avail < 4:
            return False
        length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), head + 2
    elif length == 127:
        if avail < 10:
            return False
        length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), head + 8
    return avail >= head + length


def valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 7.4): 1004-1006 and 1015 are reserved, 3000-4999 are free."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


class FrameReader:
    """Reads client frames one at a time and returns whole messages and control frames.

    A fragmented text message is reassembled across continuation frames; control frames may come
    between its fragments and are returned as they arrive. `max_message_bytes` bounds the whole
    message and is checked from the header, before a payload byte is read.
    """

    def __init__(self, read_exact, max_message_bytes: int):
        self._read_exact = read_exact
        self._max = max_message_bytes
        self.frames = 0  # frames read so far, control frames and fragments included
        self._parts: list[str] = []
        self._size = 0
        self._fragments = 0
        self._decoder = None  # an incremental UTF-8 decoder while a fragmented message is open

    def next_event(self) -> Text | Ping | Pong | Close:
        """Read frames until one yields an event. Raises CloseConnection or EOFError."""
        while True:
            event = self._read_frame()
            if event is not None:
                return event

    def _read_frame(self):
        b1, b2 = self._read_exact(2)
        self.frames += 1
        fin, rsv, opcode = b1 & 0x80, b1 & 0x70, b1 & 0x0F
        masked, length = b2 & 0x80, b2 & 0x7F
        if rsv:
            raise CloseConnection(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
        if opcode not in KNOWN_OPCODES:
            raise CloseConnection(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if not masked:
            raise CloseConnection(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        control = opcode >= OP_CLOSE
        if control and not fin:
            raise CloseConnection(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
        if control and length > MAX_CONTROL_PAYLOAD:
            raise CloseConnection(CloseCode.PROTOCOL_ERROR, "control frame too long")
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
            if length >> 63:
                raise CloseConnection(CloseCode.PROTOCOL_ERROR, "payload length has its top bit set")
        if trace.ON:
            trace.frame(fin, opcode, masked, length)
        if opcode == OP_BINARY:
            raise CloseConnection(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
        if not control and self._size + length > self._max:
            raise CloseConnection(CloseCode.MESSAGE_TOO_BIG, f"message over {self._max} bytes")
        mask = self._read_exact(4)
        payload = unmask(self._read_exact(length), mask) if length else b""

        if opcode == OP_TEXT:
            if self._decoder is not None:
                raise CloseConnection(CloseCode.PROTOCOL_ERROR, "new message before the last one finished")
            if fin:
                return Text(_decode_utf8(payload))
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._append(payload, final=False, length=length)
            return None
        if opcode == OP_CONTINUATION:
            if self._decoder is None:
                raise CloseConnection(CloseCode.PROTOCOL_ERROR, "continuation frame with no message to continue")
            self._append(payload, final=bool(fin), length=length)
            if not fin:
                return None
            text = "".join(self._parts)
            self._parts, self._size, self._fragments, self._decoder = [], 0, 0, None
            return Text(text)
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        return _parse_close(payload)

    def _append(self, payload: bytes, final: bool, length: int) -> None:
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS:
            raise CloseConnection(CloseCode.MESSAGE_TOO_BIG, f"message in more than {MAX_FRAGMENTS} fragments")
        try:
            part = self._decoder.decode(payload, final)
        except UnicodeDecodeError:
            raise CloseConnection(CloseCode.INVALID_DATA, "text is not valid UTF-8") from None
        if part:
            self._parts.append(part)
        self._size += length


def _decode_utf8(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CloseConnection(CloseCode.INVALID_DATA, "text is not valid UTF-8") from None


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise CloseConnection(CloseCode.PROTOCOL_ERROR, "close payload of one byte")
    (code,) = struct.unpack("!H", payload[:2])
    if not valid_close_code(code):
        raise CloseConnection(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    return Close(code, _decode_utf8(payload[2:]))
