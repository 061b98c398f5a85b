"""What durable history costs: roomchat with `--db :memory:` against `--db <file>`, same load, same run.

Each server runs as a subprocess (pinned to CPU 0 when there are two CPUs; this process takes CPU 1).
A light asyncio client (raw sockets, a few lines of framing, no JSON on the hot path) opens
ROOMS rooms with SENDERS senders and RECEIVERS receivers each, then runs two phases:

- saturated: every sender keeps --inflight chats outstanding; its own echo releases the next one.
  Gives incoming chat messages/s (echoes/s) and the send -> own echo latency under full load.
- paced: --rate chats/s in total, sent on a schedule; gives the latency at a load both keep up with.

Every delivery is checked (per client, seq must rise by 1). After the SQLite run the file is opened
and every echoed message must be in it. The SQLite server must keep at least 70 % of the in-memory
throughput (exit status 1 otherwise).

    python bench/store_bench.py                  # about 1 minute (3 rounds)
    python bench/store_bench.py --repeat 1 --duration 2   # quicker, noisier
    python bench/store_bench.py --store-only     # SqliteStore alone: synchronous NORMAL against FULL
"""

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
TARGET_RATIO = 0.70
STAMP_DIGITS = 19
COMMITS_RE = re.compile(r"history: (\d+) chat events stored in (\d+) commits")
ZERO_MASK = b"\0\0\0\0"  # a client must mask; a zero key keeps the payload as is (RFC 6455 allows any key)


# -- the client -----------------------------------------------------------------------------------


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
        transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
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


# -- the servers ----------------------------------------------------------------------------------


def pinned(cpu) -> list:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def cpu_busy(seconds=0.5) -> list:
    """Each CPU's busy share (percent) over a short look, from /proc/stat."""
    def read():
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
        return [(sum(map(int, r[1:])), int(r[4]) + int(r[5])) for r in rows]  # total, idle + iowait
    before = read()
    time.sleep(seconds)
    return [100 * (1 - (i1 - i0) / max(1, t1 - t0)) for (t0, i0), (t1, i1) in zip(before, read(), strict=True)]


def wait_for_quiet(limit_pct=20, patience=20.0) -> float:
    """Hold a run while other work keeps the CPUs busy; return the busiest share seen last."""
    deadline = time.monotonic() + patience
    while True:
        busiest = max(cpu_busy())
        if busiest < limit_pct or time.monotonic() > deadline:
            return busiest


def run_server(db: str, args, logfile: Path) -> dict:
    """Start roomchat on `db`, drive it, stop it gracefully; for a file, check what it stored."""
    log = open(logfile, "w")  # noqa: SIM115 - the child owns it until it exits
    proc = subprocess.Popen(
        [*pinned(SERVER_CPU), sys.executable, str(ROOT / "roomchat.py"), "--port", "0", "--db", db,
         "--rate-burst", "1000000", "--rate-per-second", "1000000", "--log-level", "INFO"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    log.close()
    port = None
    for line in proc.stdout:
        if "listening on ws://" in line:
            port = int(line.rsplit(":", 1)[1].strip(" /\n"))
            break
    if port is None:
        proc.wait()
        raise SystemExit(f"roomchat --db {db} did not start; see {logfile}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    try:
        result = asyncio.run(drive(port, args))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    if db != ":memory:":
        with sqlite3.connect(db) as conn:
            ever = conn.execute("SELECT sum(last_seq) FROM rooms").fetchone()[0]  # rows may be pruned
        result["file_mib"] = os.path.getsize(db) / 2**20
        if ever != result["echoes"]:
            result["problems"].append(f"{result['echoes']} chats echoed but {ever} stored")
        match = COMMITS_RE.search(logfile.read_text())  # the store logs its totals when it closes
        if match:
            result["per_commit"] = int(match[1]) / max(1, int(match[2]))
    return result


ROWS = [  # label, phase, key, format
    ("saturated: incoming msgs/s", "saturated", "msgs_per_s", "{:,.0f}"),
    ("saturated: deliveries/s", "saturated", "deliveries_per_s", "{:,.0f}"),
    ("saturated: p50 echo ms", "saturated", "p50_ms", "{:.2f}"),
    ("saturated: p99 echo ms", "saturated", "p99_ms", "{:.2f}"),
    ("paced: p50 echo ms", "paced", "p50_ms", "{:.2f}"),
    ("paced: p99 echo ms", "paced", "p99_ms", "{:.2f}"),
]


def compare(args) -> int:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"store_bench: {args.rooms} rooms x ({args.senders} senders + {args.receivers} receivers), "
          f"{args.inflight} in flight per sender, paced at {args.rate:g}/s, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s measured per phase, {args.repeat} round(s)", flush=True)
    runs = {"memory": [], "sqlite": []}
    ok = True
    with tempfile.TemporaryDirectory(prefix="store_bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for round_no in range(1, args.repeat + 1):
            for name in ("memory", "sqlite"):  # alternate, so drifting background load hits both
                db = ":memory:" if name == "memory" else str(workdir / "bench.db")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(db)
                busy = wait_for_quiet()
                result = run_server(db, args, workdir / f"server-{name}-{round_no}.log")
                runs[name].append(result)
                sat = result["saturated"]
                print(f"  round {round_no} {name:6}: {sat['msgs_per_s']:8,.0f} msgs/s, p99 {sat['p99_ms']:6.2f} ms"
                      f"  (busiest CPU before the run: {busy:.0f}%)", flush=True)
                if result["gaps"] or result["problems"]:
                    ok = False
                    print(f"  PROBLEM: {result['gaps']} seq gaps; {result['problems']}")
    print(f"\nmedian of {args.repeat} round(s){'':5} {'memory':>12} {'sqlite':>12} {'sqlite/memory':>14}")
    median = {}
    for label, phase, key, fmt in ROWS:
        a, b = (statistics.median(r[phase][key] for r in runs[name]) for name in ("memory", "sqlite"))
        median[(phase, key)] = (a, b)
        print(f"{label:30} {fmt.format(a):>12} {fmt.format(b):>12} {b / a:>14.2f}")
    last = runs["sqlite"][-1]
    print(f"sqlite file after a run: {last['file_mib']:.1f} MiB for {last['echoes']:,} chats "
          f"(at most {10000 * args.rooms:,} kept); group commit: "
          f"{statistics.median(r.get('per_commit', 0) for r in runs['sqlite']):.1f} events per commit (median)")
    mem, sql = median[("saturated", "msgs_per_s")]
    ratio = sql / mem
    verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"\nsqlite keeps {ratio:.0%} of the in-memory throughput (target >= {TARGET_RATIO:.0%}): {verdict}")
    return 0 if ok and ratio >= TARGET_RATIO else 1


# -- the store alone ------------------------------------------------------------------------------


class Counted:
    """Plays the Registry for a bare store: counts what on_durable reports."""

    def __init__(self, store):
        self.events = self.commits = 0
        self.cond = threading.Condition()
        store.on_durable = self.on_durable

    def on_durable(self, events):
        with self.cond:
            self.events += len(events)
            self.commits += 1
            self.cond.notify_all()

    def wait(self, n):
        with self.cond:
            self.cond.wait_for(lambda: self.events >= n)


def measure_store(store_class, mode, args) -> str:
    with tempfile.TemporaryDirectory(prefix="store_bench-") as tmp:
        store = store_class(str(Path(tmp) / "h.db"), synchronous=mode)
        counted = Counted(store)
        seq, lone = 0, []
        for _ in range(args.lone):
            seq += 1
            t0 = time.perf_counter_ns()
            store.append({"room": "r", "seq": seq, "from": "n", "text": "hello", "ts": time.time()})
            counted.wait(seq)
            lone.append(time.perf_counter_ns() - t0)
        flood_from, commits_from = seq, counted.commits
        t0 = time.perf_counter()
        for _ in range(args.flood):
            seq += 1
            store.append({"room": f"r{seq % 8}", "seq": seq, "from": "n", "text": "x" * 48, "ts": 1.0})
        counted.wait(seq)
        flood_s = time.perf_counter() - t0
        store.close()
    pct = percentiles(lone)
    per_commit = (seq - flood_from) / max(1, counted.commits - commits_from)
    return f"{mode:12} {pct['p50_ms']:>12.3f} {pct['p99_ms']:>12.3f} {args.flood / flood_s:>12,.0f} {per_commit:>14.0f}"


def store_only(args) -> int:
    """SqliteStore without a server: commit latency of a lone event, and throughput of a flood."""
    sys.path.insert(0, str(ROOT))
    from chatserver.store import SqliteStore

    print(f"SqliteStore alone: append -> on_durable of {args.lone} lone events, then a flood of {args.flood:,}")
    print(f"{'synchronous':12} {'lone p50 ms':>12} {'lone p99 ms':>12} {'flood ev/s':>12} {'events/commit':>14}")
    for mode in ("NORMAL", "FULL"):
        print(measure_store(SqliteStore, mode, args), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rooms", type=int, default=4)
    p.add_argument("--senders", type=int, default=4, help="senders per room")
    p.add_argument("--receivers", type=int, default=4, help="receivers per room (they only read)")
    p.add_argument("--inflight", type=int, default=8, help="saturated phase: chats outstanding per sender")
    p.add_argument("--rate", type=float, default=1000, help="paced phase: chats per second in total")
    p.add_argument("--text-pad", type=int, default=40, help="characters added to each chat text")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=3, help="rounds of (memory, sqlite); medians are reported")
    p.add_argument("--workdir", help="keep the server log and the SQLite file here (default: a temporary directory)")
    p.add_argument("--store-only", action="store_true", help="measure SqliteStore alone instead")
    p.add_argument("--lone", type=int, default=300, help="store-only: lone events timed one by one")
    p.add_argument("--flood", type=int, default=100_000, help="store-only: events appended at once")
    args = p.parse_args(argv)
    return store_only(args) if args.store_only else compare(args)


if __name__ == "__main__":
    sys.exit(main())
