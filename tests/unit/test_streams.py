"""transport/streams.py on real socket pairs: the Outbox and its Flusher (order, partial writes,
the overflow close, replies outside the cap, TLS records) and the SocketReader.

The sending end of each pair has a small SO_SNDBUF, so the kernel soon takes no more and the
Outbox must queue; the test reads the other end only when it chooses to.
"""

import socket
import ssl
import threading

import pytest

from chatserver.protocol import CloseCode
from chatserver.transport import tls
from chatserver.transport.streams import Flusher, Outbox, SocketReader
from chatserver.wire import frames
from tests.services import make_tls_files

SNDBUF = 4096  # the kernel doubles it; a few KiB is all a peer that does not read lets through
WAIT = 30.0  # seconds: generous, only a broken outbox ever waits this long
OVERFLOW = frames.close_frame(CloseCode.POLICY_VIOLATION, "too slow: outgoing queue full")


@pytest.fixture(scope="module")
def flusher():
    """One Flusher thread for the module's tests, as a server has one for all its connections."""
    thread = Flusher()
    thread.start()
    yield thread
    thread.stop()
    thread.join(WAIT)


@pytest.fixture
def pair():
    """(sending end, reading end): a connected socket pair, the sending end with a small send buffer."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SNDBUF)
    theirs.settimeout(WAIT)
    yield ours, theirs
    ours.close()
    theirs.close()


class Overflows:
    """An `on_overflow` callback that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


def numbered(i: int, size: int = 1000) -> bytes:
    """Text frame number `i`, `size` bytes of payload, its number first."""
    return frames.text_frame(f"{i:08d}".encode().ljust(size, b"."))


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The whole unmasked server frames at the start of `data` as (opcode, payload), and where they end."""
    found, pos = [], 0
    while pos + 2 <= len(data):
        length, head = data[pos + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        if pos + head + length > len(data):
            break
        found.append((data[pos] & 0x0F, data[pos + head : pos + head + length]))
        pos += head + length
    return found, pos


def read_exactly(recv, n: int) -> bytes:
    """`n` bytes from `recv` (a socket's or an SSL socket's), or fail at EOF."""
    parts, have = [], 0
    while have < n:
        chunk = recv(min(65536, n - have))
        assert chunk, f"EOF after {have} of {n} bytes"
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def read_until_close(recv) -> list[tuple[int, bytes]]:
    """Every frame from `recv` up to and including a close frame."""
    data = b""
    while True:
        chunk = recv(65536)
        assert chunk, "EOF before a close frame"
        data += chunk
        found, _ = split_frames(data)
        if found and found[-1][0] == frames.OP_CLOSE:
            return found


def fill(outbox: Outbox, count: int, own: bool = False) -> list[bytes]:
    """Put `count` numbered frames (replies when `own`) and return them; every put must be taken."""
    sent = [numbered(i) for i in range(count)]
    for data in sent:
        assert outbox.put(data, len(data) if own else 0)
    return sent


# -- Outbox and Flusher ------------------------------------------------------------------------


def test_put_on_an_idle_socket_is_written_at_once(pair, flusher):
    """With nothing queued, `put` writes straight to the socket: the peer reads it, nothing waits."""
    ours, theirs = pair
    outbox = Outbox(ours, 1 << 20, flusher, Overflows())
    assert outbox.put(numbered(1))
    assert read_exactly(theirs.recv, len(numbered(1))) == numbered(1)
    assert outbox.others_queued == 0 and outbox.sent == len(numbered(1))


def test_partial_writes_are_finished_by_the_flusher_in_put_order(pair, flusher):
    """What the kernel does not take is queued; the Flusher writes it, whole and in order, once the peer reads."""
    ours, theirs = pair
    outbox = Outbox(ours, 1 << 22, flusher, Overflows())
    sent = fill(outbox, 300)
    assert outbox.others_queued > 0  # the kernel took only part: the rest waits for the Flusher
    assert read_exactly(theirs.recv, sum(map(len, sent))) == b"".join(sent)
    assert outbox.drain(WAIT)
    assert outbox.others_queued == 0 and outbox.sent == sum(map(len, sent))


def test_puts_from_several_threads_keep_each_threads_order(pair, flusher):
    """Frames put by several threads at once all arrive whole, each thread's in the order it put them."""
    ours, theirs = pair
    outbox = Outbox(ours, 1 << 24, flusher, Overflows())
    threads, per_thread = 4, 200

    def sender(t):
        for i in range(per_thread):
            assert outbox.put(numbered(t * 10_000 + i, 300))

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    data = read_exactly(theirs.recv, threads * per_thread * len(numbered(0, 300)))
    for worker in workers:
        worker.join(WAIT)
    found, end = split_frames(data)
    assert end == len(data)
    numbers = [int(payload[:8]) for _, payload in found]
    for t in range(threads):
        assert [n for n in numbers if n // 10_000 == t] == [t * 10_000 + i for i in range(per_thread)]


def test_overflow_past_max_outbox_bytes_closes_with_1008(pair, flusher):
    """Once more than the limit of others' traffic waits, the backlog is dropped, on_overflow runs once,
    later puts are refused, and the peer reads whole frames in order, then the 1008 close frame."""
    ours, theirs = pair
    overflows = Overflows()
    outbox = Outbox(ours, 64 * 1024, flusher, overflows, OVERFLOW)
    accepted = 0
    while outbox.put(numbered(accepted, 20_000)):  # larger than the send buffer: one is always half written
        accepted += 1
        assert accepted < 10_000, "never overflowed"
    assert overflows.calls == 1
    assert not outbox.put(numbered(accepted + 1))
    assert overflows.calls == 1
    found = read_until_close(theirs.recv)
    *texts, (opcode, payload) = found
    assert (opcode, int.from_bytes(payload[:2], "big")) == (frames.OP_CLOSE, CloseCode.POLICY_VIOLATION)
    assert payload[2:] == b"too slow: outgoing queue full"
    numbers = [int(body[:8]) for _, body in texts]
    assert numbers == list(range(len(numbers)))  # a prefix of what was put: in order, no gap, none cut
    assert len(numbers) < accepted  # the backlog was dropped


def test_replies_never_count_toward_the_cap(pair, flusher):
    """Replies to the client's own requests may wait far past max_outbox_bytes without a close;
    `wait_for_room` holds the client's next request until they are read."""
    ours, theirs = pair
    overflows = Overflows()
    outbox = Outbox(ours, 8 * 1024, flusher, overflows, OVERFLOW, reply_budget=16 * 1024)
    sent = fill(outbox, 200, own=True)  # about 200 KB of replies, 25 x the cap
    assert overflows.calls == 0
    assert not outbox.wait_for_room(0.05)  # the peer reads nothing meanwhile: no room
    assert outbox.put(numbered(999))  # others' traffic still goes, queued behind the replies
    assert read_exactly(theirs.recv, sum(map(len, sent)) + len(numbered(999))) == b"".join(sent) + numbered(999)
    assert outbox.wait_for_room(WAIT)
    assert overflows.calls == 0


def test_put_last_is_the_last_frame_sent(pair, flusher):
    """After `put_last` (a close frame), nothing more is sent and a second close frame is dropped."""
    ours, theirs = pair
    outbox = Outbox(ours, 1 << 20, flusher, Overflows())
    sent = fill(outbox, 50)
    outbox.put_last(frames.close_frame(CloseCode.GOING_AWAY, "bye"))
    outbox.put_last(frames.close_frame(CloseCode.INTERNAL_ERROR, "again"))
    assert not outbox.put(numbered(50))
    found = read_until_close(theirs.recv)
    assert [frames.text_frame(body) for _, body in found[:-1]] == sent
    assert found[-1] == (frames.OP_CLOSE, frames.close_frame(CloseCode.GOING_AWAY, "bye")[2:])
    assert outbox.drain(WAIT)


def test_a_write_to_a_closed_peer_closes_the_outbox(pair, flusher):
    """When the peer is gone, a write fails: the outbox stops sending and says so, without raising."""
    ours, theirs = pair
    outbox = Outbox(ours, 1 << 20, flusher, Overflows())
    theirs.close()
    assert not outbox.put(numbered(1))
    assert not outbox.put(numbered(2))
    assert not outbox.drain(1.0)


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def tls_pair(pair, tmp_path):
    """(server end, its TlsSession, client SSLSocket): a TLS connection over the socket pair."""
    ours, theirs = pair
    files = make_tls_files(tmp_path)
    session = tls.TlsSession(tls.server_context(files.cert, files.key), ours)
    ours.settimeout(WAIT)
    server = threading.Thread(target=session.handshake)
    server.start()
    client_context = ssl.create_default_context(cafile=files.ca)
    client = client_context.wrap_socket(theirs, server_hostname="localhost")
    server.join(WAIT)
    assert session.established
    ours.settimeout(None)  # as the transport does after the handshake: MSG_DONTWAIT then never waits
    yield ours, session, client
    client.close()


def test_tls_records_arrive_whole_after_partial_writes(tls_pair, flusher):
    """Frames sent as TLS records through partial writes reach the client as the same plaintext,
    in order; a record cut in two or interleaved would fail the client's decryption."""
    ours, session, client = tls_pair
    outbox = Outbox(ours, 1 << 24, flusher, Overflows(), encrypt=session.encrypt)
    sent = [*fill(outbox, 300), numbered(300, 100_000)]
    assert outbox.put(sent[-1])
    assert outbox.others_queued > 0
    assert read_exactly(client.recv, sum(map(len, sent))) == b"".join(sent)
    assert outbox.drain(WAIT)


def test_tls_overflow_finishes_the_record_under_way_then_closes_with_1008(tls_pair, flusher):
    """On overflow with TLS, a record half written is finished before the close frame's record."""
    ours, session, client = tls_pair
    overflows = Overflows()
    outbox = Outbox(ours, 64 * 1024, flusher, overflows, OVERFLOW, encrypt=session.encrypt)
    accepted = 0
    while outbox.put(numbered(accepted)):
        accepted += 1
        assert accepted < 10_000, "never overflowed"
    found = read_until_close(client.recv)
    assert found[-1][0] == frames.OP_CLOSE
    assert int.from_bytes(found[-1][1][:2], "big") == CloseCode.POLICY_VIOLATION
    assert [int(body[:8]) for _, body in found[:-1]] == list(range(len(found) - 1))
    assert overflows.calls == 1


# -- SocketReader ----------------------------------------------------------------------------------


def test_socket_reader_reads_exact_sizes_across_recvs(pair):
    """read_exact returns exactly n bytes however the sender split them, and raises EOFError at EOF."""
    ours, theirs = pair
    reader = SocketReader(theirs.recv)
    payload = bytes(range(256)) * 400
    sender = threading.Thread(target=lambda: [ours.sendall(payload[i : i + 777]) for i in range(0, len(payload), 777)])
    sender.start()
    got = [reader.read_exact(n) for n in (1, 2, 1000, 50_000, len(payload) - 51_003)]
    sender.join(WAIT)
    assert b"".join(got) == payload
    assert reader.received == len(payload)
    ours.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        reader.read_exact(1)


def test_socket_reader_lines_and_frame_ready(pair):
    """readline stops at LF (or at `limit`), and frame_ready says whether a whole frame is buffered."""
    ours, theirs = pair
    reader = SocketReader(theirs.recv)
    frame = bytes([0x81, 0x85]) + b"mask" + b"hello"  # a masked client text frame, 5 bytes
    ours.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + frame[:4])
    assert reader.readline(100) == b"GET / HTTP/1.1\r\n"
    assert reader.readline(4) == b"Host"
    assert reader.readline(100) == b": x\r\n"
    assert reader.readline(100) == b"\r\n"
    assert not reader.frame_ready()  # nothing of the frame is buffered yet
    assert reader.read_exact(2) == frame[:2]
    ours.sendall(frame[4:])
    assert reader.read_exact(9) == frame[2:]
    ours.sendall(frame + frame[:3])
    assert reader.read_exact(1) == frame[:1]  # pulls the whole frame and the start of the next in
    assert not reader.frame_ready()  # the buffered frame no longer starts at the read position
    assert reader.read_exact(10) == frame[1:]
    assert not reader.frame_ready()  # only 3 bytes of the next frame
    ours.sendall(frame[3:])
    assert reader.read_exact(3) == frame[:3]
