"""Load generator for the roomchat benchmark: many WebSocket clients in one asyncio process.

It must never be the bottleneck, so it uses raw asyncio protocols with the minimal framing of
wsframes.py, parses only the fields it checks (by bytes search, no json.loads per delivery) and
reports its own CPU use over the measured window, so a figure taken with the generator near one
full core can be read as the lower bound it is.

Every chat delivery is checked: per client and room, seq must rise by exactly 1 from the first one
seen. A jump counts the skipped seqs as missing, a lower seq counts as reordered, and after the run
each client's last seq is compared with the highest seq anyone saw in its room, so lost tails count
as missing too.

Talks to the driver (run.py) in JSON lines on stdout: {"event": "mark", ...} when a phase starts,
then one {"event": "result", ...}. After the "connected" mark it waits for a line on stdin, so the
driver can sample the server (RSS, threads) while every connection is open and quiet.
"""

import argparse
import asyncio
import gc
import json
import resource
import socket
import sys
import time
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # the stdlib loop works too, at a higher CPU cost per read
    uvloop = None

from common import raise_nofile_limit
from wsframes import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    check_handshake,
    encode_frame,
    frame_bounds,
    frame_header,
    handshake_request,
    mask_bytes,
    new_mask,
)

monotonic_ns = time.monotonic_ns  # CLOCK_MONOTONIC is system-wide on Linux: comparable across processes
STAMP_DIGITS = 19  # fixed width of the send time in a chat text, so the reader slices without searching
LONG_FRAME = 1024  # above this, cut the chat text out before searching for fields


def emit(**fields):
    print(json.dumps(fields), flush=True)


class Client(asyncio.Protocol):
    """One WebSocket connection: handshake, join, then counting and checking chat deliveries."""

    def __init__(self, gen, room, target=None):
        self.gen = gen
        self.room = room
        self.host, self.port = target or (gen.host, gen.port)  # the server this client talks to
        self.mask = new_mask()
        self.transport = None
        self.request, self.accept = handshake_request(self.host, self.port)
        self.head = b""  # handshake response until the blank line
        self.upgraded = False
        self.pending = []  # chunks of a frame that has not fully arrived
        self.have = 0
        self.need = 0
        self.fragments = None  # payload parts of a fragmented message
        self.replies = {}  # opening replies by type, kept until expect() asks for them
        self.waiting_for = None  # "welcome" or "joined" while opening
        self.waiter = None
        self.joined = False
        self.closed = False
        self.next_seq = {}  # room (bytes) -> next expected seq
        self.deliveries = 0
        self.reads = 0  # data_received calls: deliveries / reads says how well reads batch
        self.missing = 0
        self.reordered = 0
        self.errors = 0
        # Set on clients that send:
        self.sender = False
        self.msg_id = 0
        self.inflight = 0
        self.pad = b""
        self.masked_pad = None
        self.on_echo = None  # called with (client, count) when own chats come back
        self.latencies = None  # a list to append latencies (ns) to while a window records them

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        # Nagle would hold back a chat written while an earlier one is unacknowledged; asyncio sets
        # TCP_NODELAY itself, uvloop does not.
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.request)

    def connection_lost(self, exc):
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"closed while waiting for {self.waiting_for}: {exc}"))

    def data_received(self, data):
        if not self.upgraded:
            data = self._read_handshake(data)
            if not data:
                return
        if self.pending:
            self.pending.append(data)
            self.have += len(data)
            if self.have < self.need:
                return
            data = b"".join(self.pending)
            self.pending = []
        now = monotonic_ns()
        self.reads += 1
        n = len(data)
        pos = 0
        echoes = 0
        while pos < n:
            # Inline fast path for the short length forms (most frames); frame_bounds does the rest.
            b1 = data[pos + 1] if pos + 1 < n else 255
            if b1 < 126:
                start = pos + 2
                end = start + b1
            elif b1 == 126 and pos + 4 <= n:
                start = pos + 4
                end = start + (data[pos + 2] << 8 | data[pos + 3])
            else:
                start, end = frame_bounds(data, pos, n)
            if start < 0 or end > n:  # incomplete (or, -2, masked)
                if start == -2:
                    self._fail("masked frame from server")
                    return
                self.pending = [data[pos:]]
                self.have = n - pos
                self.need = end - pos
                break
            b0 = data[pos]
            if b0 == 0x81:  # a final text frame: nearly every frame
                echoes += self._text(data, start, end, now)
            else:
                echoes += self._other(b0, data[start:end], now)
            pos = end
        if echoes:
            self.inflight -= echoes
            if self.on_echo is not None:
                self.on_echo(self, echoes)

    # -- frames -------------------------------------------------------------------------------

    def _text(self, data, start, end, now):
        """Check one text message; return 1 if it is the echo of our own chat, else 0.

        Fields are found by bytes search, in whatever order the server wrote them. Our chat texts
        start with "t=" and hold no quotes, so a long one is cut out first: a 32 KiB text is then
        skipped by one memchr instead of being scanned once per field.
        """
        if not self.joined:
            self._opening_reply(data[start:end])
            return 0
        t = -1  # where our text starts, once looked up
        if end - start > LONG_FRAME:
            t = data.find(b'"t=', start, end)
        fields = data[start:end] if t < 0 else data[start:t] + data[data.find(b'"', t + 1, end) : end]
        i = fields.find(b'"seq"')
        if i < 0 or fields.find(b'"chat"') < 0:
            if fields.find(b'"error"') >= 0:
                self._error(data[start:end])
            return 0  # presence and the like
        j = fields.find(b",", i)
        if j < 0:
            j = fields.find(b"}", i)
        seq = int(fields[i + 6 : j])  # int() skips the space json.dumps may put after the colon
        r = fields.find(b'"', fields.find(b'"room"') + 6)
        room = fields[r + 1 : fields.find(b'"', r + 1)]
        expected = self.next_seq.get(room)
        if expected is None or seq == expected:
            self.next_seq[room] = seq + 1
        elif seq > expected:
            self.missing += seq - expected
            self.next_seq[room] = seq + 1
        else:
            self.reordered += 1
        self.deliveries += 1
        latencies = self.latencies
        if latencies is not None:
            if t < 0:
                t = data.find(b'"t=', start, end)
            latencies.append(now - int(data[t + 3 : t + 3 + STAMP_DIGITS]))
        if self.sender:
            k = fields.find(b'"id"')
            if k >= 0:
                return self._is_own_id(fields, k)
        return 0

    def _is_own_id(self, fields, k):
        """1 if the "id" at fields[k] is one this client sent: its own echo frees an in-flight slot."""
        j = fields.find(b",", k)
        if j < 0:
            j = fields.find(b"}", k)
        try:
            return int(0 < int(fields[k + 5 : j]) <= self.msg_id)
        except ValueError:  # "id": null or a string: not one of ours
            return 0

    def _other(self, b0, payload, now):
        """Control frames and fragmented messages: rare, so kept off the hot path."""
        opcode = b0 & 0x0F
        if opcode == OP_PING:
            self.transport.write(encode_frame(OP_PONG, payload, self.mask))
        elif opcode == OP_CLOSE:
            self.gen.closed_by_server += 1
            self.gen.note(f"server closed: {payload[:2].hex()} {payload[2:80]!r}")
            if not self.closed:
                self.transport.write(encode_frame(OP_CLOSE, payload[:2], self.mask))
                self.transport.close()
        elif opcode in (OP_TEXT, OP_CONT):
            self.fragments = [payload] if opcode == OP_TEXT else [*(self.fragments or []), payload]
            if b0 & 0x80:
                whole = b"".join(self.fragments)
                self.fragments = None
                return self._text(whole, 0, len(whole), now)
        return 0

    def _read_handshake(self, data):
        """Collect the 101 response; return the bytes after it (they are frames), or b""."""
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self.head[:end], self.head[end + 4 :]
        self.head = b""
        try:
            check_handshake(head, self.accept)
        except HandshakeError as exc:
            self._fail(f"handshake: {exc}")
            return b""
        self.upgraded = True
        return rest

    def _opening_reply(self, payload):
        """welcome / joined / error before the fast path starts; may arrive before expect() runs."""
        msg = json.loads(payload)
        kind = msg.get("type")
        if kind == "joined":
            self.joined = True  # chat events may follow in this very buffer
        elif kind == "error":
            self.errors += 1
            self.gen.note(f"error while opening: {payload[:200]!r}")
        self.replies[kind] = msg
        waiter = self.waiter
        if waiter is not None and not waiter.done() and kind in (self.waiting_for, "error"):
            waiter.set_result(None)

    def _error(self, payload):
        self.errors += 1
        self.gen.note(f"error event: {payload[:200]!r}")

    def _fail(self, why):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(why))
        self.gen.note(why)
        self.transport.abort()

    # -- actions ------------------------------------------------------------------------------

    async def expect(self, kind):
        """Wait for the opening reply of this type; an error reply fails the connection."""
        self.waiting_for = kind
        if kind not in self.replies and "error" not in self.replies:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if "error" in self.replies:
            raise ConnectionError(f"error while waiting for {kind}: {self.replies['error']}")
        return self.replies.pop(kind)

    def send_json_text(self, payload):
        self.transport.write(encode_frame(OP_TEXT, payload, self.mask))

    def chat_frame(self):
        """A chat request whose text is the monotonic send time padded to the scenario's length.

        The stamp has a fixed width, so the padding always sits at the same offset of the payload
        and is masked once per client: sending a 32 KiB text costs no more than a short one.
        """
        self.msg_id += 1
        self.inflight += 1
        head = b'{"type":"chat","room":"%s","text":"t=%019d;' % (self.room, monotonic_ns())
        tail = b'","id":%d}' % self.msg_id
        if self.masked_pad is None:
            self.masked_pad = mask_bytes(self.pad, self.mask, len(head))
        return b"".join((
            frame_header(OP_TEXT, len(head) + len(self.pad) + len(tail)),
            self.mask,
            mask_bytes(head, self.mask),
            self.masked_pad,
            mask_bytes(tail, self.mask, len(head) + len(self.pad)),
        ))

    def send_chats(self, count):
        if not self.closed:
            self.transport.write(b"".join([self.chat_frame() for _ in range(count)]))


class LoadGen:
    """Opens the clients, runs one scenario mode and reports what it saw."""

    def __init__(self, args):
        self.targets = [(url.hostname, url.port) for url in map(urlsplit, args.url)]
        self.host, self.port = self.targets[0]
        self.args = args
        self.clients = []
        self.senders = []
        self.closed_by_server = 0
        self.connect_failures = 0
        self.notes = {}  # distinct diagnostic -> count
        self.sending = False

    def note(self, text):
        self.notes[text] = self.notes.get(text, 0) + 1

    # -- opening ------------------------------------------------------------------------------

    async def open_all(self):
        """Connect, await welcome, join; at most --concurrency at a time so the listen backlog holds.

        With several --url, clients go to the servers round-robin in the order they are made
        (room by room), so every room has members, and senders, on each of them."""
        args = self.args
        pad = b"x" * max(0, args.text_len - STAMP_DIGITS - 3)
        for r in range(args.rooms):
            room = b"r%d" % r
            for c in range(args.clients_per_room):
                client = Client(self, room, self.targets[len(self.clients) % len(self.targets)])
                if c < args.senders_per_room:
                    client.sender = True
                    client.pad = pad
                    self.senders.append(client)
                self.clients.append(client)
        gate = asyncio.Semaphore(args.concurrency)
        await asyncio.gather(*(self._open(client, gate) for client in self.clients))
        self.clients = [c for c in self.clients if c.joined and not c.closed]
        self.senders = [c for c in self.senders if c.joined and not c.closed]

    async def _open(self, client, gate):
        loop = asyncio.get_running_loop()
        async with gate:
            try:
                async with asyncio.timeout(self.args.connect_timeout):
                    await loop.create_connection(lambda: client, client.host, client.port)
                    await client.expect("welcome")
                    client.send_json_text(b'{"type":"join","room":"%s"}' % client.room)
                    await client.expect("joined")
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.connect_failures += 1
                self.note(f"connect: {type(exc).__name__}: {exc}")
                if client.transport is not None:
                    client.transport.abort()

    # -- measuring ----------------------------------------------------------------------------

    def totals(self):
        clients = self.clients
        return {
            "deliveries": sum(c.deliveries for c in clients),
            "reads": sum(c.reads for c in clients),
            "missing": sum(c.missing for c in clients),
            "reordered": sum(c.reordered for c in clients),
            "errors": sum(c.errors for c in clients),
            "sent": sum(c.msg_id for c in self.senders),
            "cpu": time.process_time(),
            "user": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
            "wall": time.perf_counter(),
        }

    def window(self, before, after):
        """Rates over the measured window; the generator's CPU share says if it was the limit."""
        wall = after["wall"] - before["wall"]
        cpu = after["cpu"] - before["cpu"]
        deliveries = after["deliveries"] - before["deliveries"]
        return {
            "window_s": round(wall, 3),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / wall, 1),
            "sent_per_s": round((after["sent"] - before["sent"]) / wall, 1),
            "deliveries_per_read": round(deliveries / max(1, after["reads"] - before["reads"]), 2),
            "loadgen_cpu_s": round(cpu, 3),
            "loadgen_user_s": round(after["user"] - before["user"], 3),
            "loadgen_cpu_pct": round(100 * cpu / wall, 1),
            "loadgen_limited": cpu / wall > 0.9,
        }

    async def settle(self, timeout=10.0):
        """Wait until every sent message has echoed and deliveries have stopped arriving."""
        deadline = time.monotonic() + timeout
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now_total = sum(c.deliveries for c in self.clients)
            if now_total != last:
                last, quiet_since = now_total, time.monotonic()
            elif time.monotonic() - quiet_since > 0.3 and all(s.inflight <= 0 for s in self.senders):
                return True
        return False

    def tail_missing(self):
        """Seqs that never reached a client although someone in its room saw them."""
        highest = {}
        for c in self.clients:
            for room, nxt in c.next_seq.items():
                highest[room] = max(highest.get(room, 0), nxt)
        return sum(highest[room] - nxt for c in self.clients for room, nxt in c.next_seq.items())

    def checks(self, settled):
        totals = self.totals()
        tail = self.tail_missing()
        return {
            "missing": totals["missing"] + tail,
            "missing_tail": tail,
            "reordered": totals["reordered"],
            "errors": totals["errors"],
            "silent_clients": sum(1 for c in self.clients if not c.next_seq),
            "settled": settled,
            "total_deliveries": totals["deliveries"],
            "total_sent": totals["sent"],
        }

    def record_latencies(self, sink):
        for c in self.clients:
            c.latencies = sink

    # -- modes --------------------------------------------------------------------------------

    async def run_saturate(self):
        """Closed loop: each sender keeps --inflight chats outstanding; its own echo frees a slot."""
        args = self.args

        def refill(client, count):
            if self.sending:
                client.send_chats(count)

        for s in self.senders:
            s.on_echo = refill
        self.sending = True
        for s in self.senders:
            s.send_chats(args.inflight)
        await asyncio.sleep(args.warmup)
        before = self.mark("start")
        await asyncio.sleep(args.duration)
        after = self.mark("end")
        self.sending = False
        settled = await self.settle()
        return {**self.window(before, after), **self.checks(settled)}

    async def run_rate(self):
        """Open loop: --rate chats/s in total, round-robin over the senders, sent on a schedule
        whatever the replies, so a slow server shows up as latency instead of a lower rate."""
        args = self.args
        latencies = []
        started = time.monotonic()
        stop_at = started + args.warmup + args.duration
        window = asyncio.create_task(self._rate_window(latencies))
        sent = 0
        senders = self.senders
        while (now := time.monotonic()) < stop_at:
            due = int((now - started) * args.rate)
            while sent < due:
                senders[sent % len(senders)].send_chats(1)
                sent += 1
            await asyncio.sleep(0.001)
        before, after = await window
        settled = await self.settle()
        latencies.sort()
        return {**self.window(before, after), **self.checks(settled), "latency_ms": percentiles(latencies)}

    async def _rate_window(self, latencies):
        await asyncio.sleep(self.args.warmup)
        self.record_latencies(latencies)
        before = self.mark("start")
        await asyncio.sleep(self.args.duration)
        after = self.mark("end")
        self.record_latencies(None)
        return before, after

    async def run_probe(self):
        """Round trips of one client's chat to its own echo, one at a time, on an idle server."""
        args = self.args
        probe = self.senders[0]
        rtts = []
        got = asyncio.Event()
        probe.on_echo = lambda client, count: got.set()
        before = self.mark("start")
        for _ in range(args.probes):
            got.clear()
            t0 = time.perf_counter_ns()
            probe.send_chats(1)
            try:
                await asyncio.wait_for(got.wait(), timeout=5)
                rtts.append(time.perf_counter_ns() - t0)
            except TimeoutError:
                self.note("probe: no echo within 5 s")
            await asyncio.sleep(args.probe_interval)
        after = self.mark("end")
        settled = await self.settle()
        rtts.sort()
        return {
            **self.window(before, after),
            **self.checks(settled),
            "probe_ms": percentiles(rtts),
            "probes_lost": args.probes - len(rtts),
        }

    def mark(self, name, **extra):
        totals = self.totals()
        emit(event="mark", name=name, **extra)
        return totals


def percentiles(sorted_ns):
    """p50/p90/p99/max in milliseconds of an ascending list of nanosecond durations."""
    if not sorted_ns:
        return None
    last = len(sorted_ns) - 1
    out = {f"p{p}": sorted_ns[min(last, len(sorted_ns) * p // 100)] / 1e6 for p in (50, 90, 99)}
    out["max"] = sorted_ns[last] / 1e6
    out["count"] = len(sorted_ns)
    return {k: round(v, 3) for k, v in out.items()}


async def main(args):
    gen = LoadGen(args)
    t0 = time.monotonic()
    await gen.open_all()
    opened = {
        "wanted": args.rooms * args.clients_per_room,
        "held": len(gen.clients),
        "held_per_server": [sum(1 for c in gen.clients if (c.host, c.port) == t) for t in gen.targets],
        "connect_failures": gen.connect_failures,
        "connect_s": round(time.monotonic() - t0, 2),
    }
    gc.freeze()  # the clients live to the end: keep the collector from walking them mid-window
    gen.mark("connected", **opened)
    # The driver samples the server now; it answers with one line when done.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    result = {}
    if gen.clients and (gen.senders or args.mode == "idle"):
        if args.mode == "saturate":
            result = await gen.run_saturate()
        elif args.mode == "rate":
            result = await gen.run_rate()
        elif args.mode == "probe":
            result = await gen.run_probe()
    opened["held"] = sum(1 for c in gen.clients if not c.closed)  # still open after the load
    emit(event="result", mode=args.mode, loop=args.loop, **opened, **result,
         closed_by_server=gen.closed_by_server, notes=dict(list(gen.notes.items())[:20]))
    for c in gen.clients:
        c.transport.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="roomchat benchmark load generator (JSON lines on stdout)")
    p.add_argument("--url", required=True, action="append",
                   help="ws://127.0.0.1:PORT/; repeat it to spread the clients over several servers")
    p.add_argument("--mode", choices=("saturate", "rate", "idle", "probe"), default="saturate")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--clients-per-room", type=int, default=50)
    p.add_argument("--senders-per-room", type=int, default=10)
    p.add_argument("--inflight", type=int, default=8, help="saturate: chats outstanding per sender")
    p.add_argument("--rate", type=float, default=1500, help="rate: chats/s in total")
    p.add_argument("--text-len", type=int, default=48, help="characters of chat text")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=200, help="connections being opened at once")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--probes", type=int, default=20)
    p.add_argument("--probe-interval", type=float, default=0.1)
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="uvloop when installed: its lower cost per read keeps the generator off the limit")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise_nofile_limit()
    options = parse_args()
    if options.loop == "auto":
        options.loop = "uvloop" if uvloop else "asyncio"
    (uvloop.run if options.loop == "uvloop" else asyncio.run)(main(options))
