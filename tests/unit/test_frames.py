"""RFC 6455 rules checked on bytes alone: no sockets (frames.FrameReader over BytesIO)."""

import io
import os
import struct

import pytest

from chatserver.errors import CloseConnection
from chatserver.wire import frames
from tests.helpers import frame

MAX = 65536


def reader_for(data: bytes, max_bytes: int = MAX) -> frames.FrameReader:
    stream = io.BytesIO(data)

    def read_exact(n):
        chunk = stream.read(n)
        if len(chunk) < n:
            raise EOFError
        return chunk

    return frames.FrameReader(read_exact, max_bytes)


def events(data: bytes, max_bytes: int = MAX) -> list:
    reader, out = reader_for(data, max_bytes), []
    while True:
        try:
            out.append(reader.next_event())
        except EOFError:
            return out


def close_code(data: bytes, max_bytes: int = MAX) -> int:
    with pytest.raises(CloseConnection) as info:
        events(data, max_bytes)
    return info.value.close_code


@pytest.mark.parametrize("unmask", [frames.unmask, frames.unmask_python], ids=["speedups", "python"])
def test_unmask_matches_bytewise_xor(unmask):
    """Both unmask paths give the same bytes as the RFC's byte-by-byte XOR."""
    for n in (0, 1, 3, 4, 5, 125, 4097):
        payload, mask = os.urandom(n), os.urandom(4)
        assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_text_frame_decodes():
    """A masked text frame becomes a Text event."""
    assert events(frame(0x1, "héllo".encode())) == [frames.Text("héllo")]


def test_fragments_reassemble_with_control_frames_between():
    """Continuation frames join into one message; a ping in the middle is returned in place."""
    data = frame(0x1, b"he", fin=False) + frame(0x9, b"p") + frame(0x0, b"ll", fin=False) + frame(0x0, b"o")
    assert events(data) == [frames.Ping(b"p"), frames.Text("hello")]


def test_utf8_split_across_fragments_is_accepted():
    """A multi-byte character split between two fragments is valid."""
    euro = "€".encode()
    assert events(frame(0x1, euro[:1], fin=False) + frame(0x0, euro[1:])) == [frames.Text("€")]


@pytest.mark.parametrize(
    "data",
    [
        frame(0x1, b"\xff"),
        frame(0x1, b"ok\xc3", fin=False) + frame(0x0, b"("),
        frame(0x1, "€".encode()[:2], fin=False) + frame(0x0, b""),
    ],
    ids=["invalid-byte", "invalid-across-fragments", "truncated-at-end"],
)
def test_invalid_utf8_closes_1007(data):
    """Invalid UTF-8, whole or split across fragments, closes with 1007."""
    assert close_code(data) == 1007


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(0x1, b"hi", masked=False), 1002),
        (frame(0x3, b""), 1002),
        (frame(0xB, b""), 1002),
        (frame(0x1, b"hi", rsv=4), 1002),
        (frame(0x9, b"x" * 126), 1002),
        (frame(0x9, b"x", fin=False), 1002),
        (frame(0x0, b"orphan"), 1002),
        (frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),
        (frame(0x8, b"\x03"), 1002),
        (frame(0x8, struct.pack("!H", 1005)), 1002),
        (frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
        (frame(0x2, b"\x00\x01"), 1003),
    ],
    ids=["unmasked", "opcode-3", "opcode-0xB", "rsv", "long-control", "fragmented-control", "orphan-continuation",
         "text-inside-fragmented", "close-one-byte", "close-reserved-code", "close-bad-utf8-reason", "binary"],
)
def test_protocol_violations_map_to_close_codes(data, code):
    """Each rule violation raises CloseConnection with the close code RFC 6455 asks for."""
    assert close_code(data) == code


def test_oversize_header_closes_1009_before_reading_payload():
    """A header claiming 2**62 bytes is refused from the header alone (no payload is needed)."""
    assert close_code(frame(0x1, b"", length=2**62)) == 1009


def test_oversize_across_fragments_closes_1009():
    """The limit applies to the whole message, not to each fragment."""
    data = frame(0x1, b"a" * 40, fin=False) + frame(0x0, b"b" * 40)
    assert close_code(data, max_bytes=64) == 1009


def test_message_at_limit_is_accepted():
    """Exactly max_message_bytes is allowed."""
    assert events(frame(0x1, b"a" * 64), max_bytes=64) == [frames.Text("a" * 64)]


def test_close_frame_parsed():
    """A close frame yields its code and reason; an empty one yields no code."""
    assert events(frame(0x8, struct.pack("!H", 1000) + b"bye")) == [frames.Close(1000, "bye")]
    assert events(frame(0x8, b"")) == [frames.Close(None, "")]


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 70000])
def test_encode_frame_lengths(n):
    """Server frames use the shortest length encoding and are unmasked."""
    data = frames.encode_frame(frames.OP_TEXT, b"x" * n)
    b1, b2 = data[0], data[1]
    assert b1 == 0x81 and not b2 & 0x80
    header = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(data) == header + n


def test_close_frame_reason_fits_control_limit():
    """A long close reason is cut so the frame stays a valid control frame."""
    data = frames.close_frame(1008, "x" * 500)
    assert data[1] <= 125


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_frame_ready_only_for_whole_frames(size):
    """frame_ready is True exactly when a whole frame (any length encoding) is buffered."""
    data = frame(0x1, b"a" * size)
    assert frames.frame_ready(b"xx" + data, 2)
    assert frames.frame_ready(data + data[:3], 0)
    assert not any(frames.frame_ready(data[:cut], 0) for cut in range(len(data)) if cut in (0, 1, 3, 9, len(data) - 1))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_encode_frames_text_frame(size):
    """text_frame writes encode_frame's header without its call (the per-event path): the same
    bytes at each length boundary of RFC 6455 5.2 (7 bits, 16 bits, 64 bits)."""
    payload = b"x" * size
    assert frames.text_frame(payload) == frames.encode_frame(frames.OP_TEXT, payload)
