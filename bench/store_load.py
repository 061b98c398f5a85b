"""The load of bench/store_bench.py: a light asyncio client (raw sockets, a few lines of framing,
no JSON on the hot path) that opens rooms of senders and receivers and runs a saturated phase
and a paced phase, checking that every delivery's seq rises by 1 per client.
"""

import asyncio
import base64
import json
import os
import time

STAMP_DIGITS = 19
ZERO_MASK = b"\0\0\0\0"  # a client must mask; a zero key keeps the payload as is (RFC 6455 allows any key)


def client_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


class Client(asyncio.Protocol):
    """One connection: handshake, join its room, then count chat deliveries and, for a sender, echoes."""

    def __init__(self, load: "Load", room: str, sender: bool):
        self.load = load
        self.room = room.encode()
        self.sender = sender
        self.transport = None
        self.buf = b""
        self.upgraded = False
        self.live = False
        self.joined = asyncio.get_running_loop().create_future()
        self.next_seq = None
        self.inflight = 0
        self.msg_id = 0

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key)

    def connection_lost(self, exc):
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"closed before joining: {exc}"))
        elif not self.load.closing:
            self.load.problems.append(f"connection lost: {exc}")

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.joined.set_exception(ConnectionError(buf[:80]))
                return
            self.upgraded = True
            pos = end + 4
        now = time.monotonic_ns()
        while n - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                self.text(buf, pos + head, end, now)
            elif opcode == 0x9:
                self.transport.write(bytes((0x8A, 0x80 | length)) + ZERO_MASK + buf[pos + head : end])
            elif opcode == 0x8 and not self.load.closing:
                self.load.problems.append(f"server closed: {buf[pos + head : end]!r}")
            pos = end
        self.buf = buf[pos:]

    def text(self, buf, start, end, now):
        if not self.live:
            self.opening(json.loads(buf[start:end]))
            return
        if buf.find(b'"type":"chat"', start, end) < 0:
            if buf.find(b'"type":"error"', start, end) >= 0:
                self.load.problems.append(bytes(buf[start:end]).decode()[:200])
            return
        i = buf.find(b'"seq":', start, end) + 6
        seq = int(buf[i : buf.find(b",", i, end)])
        if self.next_seq is not None and seq != self.next_seq:
            self.load.gaps += 1
        self.next_seq = seq + 1
        load = self.load
        load.deliveries += 1
        if self.sender and buf.find(b'"id":', start, end) >= 0:
            load.echoes += 1
            self.inflight -= 1
            if load.latencies is not None:
                t = buf.find(b'"text":"', start, end) + 8
                load.latencies.append(now - int(buf[t : t + STAMP_DIGITS]))
            if load.saturating:
                self.send_chat()

    def opening(self, msg):
        if msg["type"] == "welcome":
            self.transport.write(client_frame(b'{"type":"join","room":"%s"}' % self.room))
        elif msg["type"] == "joined":
            self.live = True
            self.joined.set_result(None)
        elif msg["type"] == "error":
            self.joined.set_exception(ConnectionError(msg))

    def send_chat(self):
        self.msg_id += 1
        self.inflight += 1
        self.transport.write(client_frame(
            b'{"type":"chat","room":"%s","text":"%019d %s","id":%d}'
            % (self.room, time.monotonic_ns(), self.load.pad, self.msg_id)
        ))


class Load:
    """All the clients of one run and what they counted."""

    def __init__(self, args):
        self.args = args
        self.pad = b"x" * args.text_pad
        self.clients: list[Client] = []
        self.senders: list[Client] = []
        self.deliveries = self.echoes = self.gaps = 0
        self.latencies = None  # a list while a phase records
        self.saturating = False
        self.closing = False
        self.problems: list[str] = []

    async def open(self, port):
        loop = asyncio.get_running_loop()
        for r in range(self.args.rooms):
            for c in range(self.args.senders + self.args.receivers):
                client = Client(self, f"room{r}", sender=c < self.args.senders)
                await loop.create_connection(lambda client=client: client, "127.0.0.1", port)
                await asyncio.wait_for(client.joined, 10)
                self.clients.append(client)
                if client.sender:
                    self.senders.append(client)

    def snapshot(self):
        return self.echoes, self.deliveries, time.perf_counter()

    async def settle(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while any(s.inflight > 0 for s in self.senders) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if any(s.inflight > 0 for s in self.senders):
            self.problems.append(f"{sum(s.inflight for s in self.senders)} chats never echoed")

    async def saturate(self):
        args = self.args
        self.saturating = True
        for sender in self.senders:
            for _ in range(args.inflight):
                sender.send_chat()
        await asyncio.sleep(args.warmup)
        self.latencies = latencies = []
        before = self.snapshot()
        await asyncio.sleep(args.duration)
        after = self.snapshot()
        self.latencies = None
        self.saturating = False
        await self.settle()
        return rates(before, after) | percentiles(latencies)

    async def paced(self):
        args = self.args
        started = time.monotonic()
        record_at, stop_at = started + args.warmup, started + args.warmup + args.duration
        sent, before, latencies = 0, None, []
        while (now := time.monotonic()) < stop_at:
            if before is None and now >= record_at:
                self.latencies = latencies
                before = self.snapshot()
            due = int((now - started) * args.rate)
            while sent < due:
                self.senders[sent % len(self.senders)].send_chat()
                sent += 1
            await asyncio.sleep(0.001)
        after = self.snapshot()
        self.latencies = None
        await self.settle()
        return rates(before, after) | percentiles(latencies)

    def close(self):
        self.closing = True
        for client in self.clients:
            client.transport.close()


def rates(before, after) -> dict:
    wall = after[2] - before[2]
    return {"msgs_per_s": (after[0] - before[0]) / wall, "deliveries_per_s": (after[1] - before[1]) / wall}


def percentiles(ns: list) -> dict:
    if not ns:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    ns.sort()
    return {f"p{p}_ms": ns[min(len(ns) - 1, len(ns) * p // 100)] / 1e6 for p in (50, 99)}


async def drive(port, args) -> dict:
    load = Load(args)
    await load.open(port)
    result = {"saturated": await load.saturate(), "paced": await load.paced()}
    result["echoes"], result["gaps"], result["problems"] = load.echoes, load.gaps, load.problems[:5]
    load.close()
    await asyncio.sleep(0.05)
    return result
