"""What durable history costs: roomchat with `--db :memory:` against `--db <file>`, same load, same run.

Each server runs as a subprocess (pinned to CPU 0 when there are two CPUs; this process takes CPU 1).
A light asyncio client (store_load.py: raw sockets, a few lines of framing, no JSON on the hot path) opens
ROOMS rooms with SENDERS senders and RECEIVERS receivers each, then runs two phases:

- saturated: every sender keeps --inflight chats outstanding; its own echo releases the next one.
  Gives incoming chat messages/s (echoes/s) and the send -> own echo latency under full load.
- paced: --rate chats/s in total, sent on a schedule; gives the latency at a load both keep up with.

Every delivery is checked (per client, seq must rise by 1). After the SQLite run the file is opened
and every echoed message must be in it. The SQLite server must keep at least 70 % of the in-memory
throughput (exit status 1 otherwise).

    python bench/store_bench.py                  # about 1 minute (3 rounds)
    python bench/store_bench.py --repeat 1 --duration 2   # quicker, noisier
    python bench/store_bench.py --store-only     # SqliteEngine alone: synchronous NORMAL against FULL
"""

import argparse
import asyncio
import contextlib
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

from store_load import drive, percentiles

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, CLIENT_CPU = 0, 1
TARGET_RATIO = 0.70
COMMITS_RE = re.compile(r"history: (\d+) chat events stored in (\d+) commits")


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
        with contextlib.closing(sqlite3.connect(db)) as conn:
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


# -- the engine alone -----------------------------------------------------------------------------


class CountingHub:
    """Plays the hub for a bare SqliteEngine: counts the events each `deliver` hands back (one
    call per group commit) and keeps any rejection, so a failing disk shows instead of a hang."""

    process_id = "store_bench"

    def __init__(self):
        self.events = self.commits = 0
        self.rejected = None
        self.cond = threading.Condition()

    def deliver(self, items):
        with self.cond:
            self.events += len(items)
            self.commits += 1
            self.cond.notify_all()

    def reject(self, items, reason):
        with self.cond:
            self.rejected = f"{len(items)} chat events refused: {reason}"
            self.cond.notify_all()

    def deliver_dm(self, client_id, event):
        pass

    def wait(self, n):
        with self.cond:
            self.cond.wait_for(lambda: self.events >= n or self.rejected)
            if self.rejected:
                raise SystemExit(f"store_bench: {self.rejected}")


def measure_engine(engine_class, meta, mode, args) -> str:
    """Lone chats timed from publish to delivery one by one, then a flood published at once."""
    with tempfile.TemporaryDirectory(prefix="store_bench-") as tmp:
        engine = engine_class(str(Path(tmp) / "h.db"), synchronous=mode)
        hub = CountingHub()
        engine.start(hub)
        lone = []
        for n in range(1, args.lone + 1):
            t0 = time.perf_counter_ns()
            engine.publish("r", [("n", "hello", meta())])
            hub.wait(n)
            lone.append(time.perf_counter_ns() - t0)
        flood_from, commits_from = hub.events, hub.commits
        t0 = time.perf_counter()
        for n in range(args.flood):
            engine.publish(f"r{n % 8}", [("n", "x" * 48, meta())])
        hub.wait(flood_from + args.flood)
        flood_s = time.perf_counter() - t0
        engine.close()
    pct = percentiles(lone)
    per_commit = args.flood / max(1, hub.commits - commits_from)
    return f"{mode:12} {pct['p50_ms']:>12.3f} {pct['p99_ms']:>12.3f} {args.flood / flood_s:>12,.0f} {per_commit:>14.0f}"


def store_only(args) -> int:
    """SqliteEngine without a server: commit latency of a lone chat, and throughput of a flood."""
    sys.path.insert(0, str(ROOT))
    from chatserver.engines.base import Meta
    from chatserver.engines.sqlite import SqliteEngine

    print(f"SqliteEngine alone: publish -> hub.deliver of {args.lone} lone chats, then a flood of {args.flood:,}")
    print(f"{'synchronous':12} {'lone p50 ms':>12} {'lone p99 ms':>12} {'flood ev/s':>12} {'events/commit':>14}")
    for mode in ("NORMAL", "FULL"):
        print(measure_engine(SqliteEngine, Meta, mode, args), flush=True)
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
    p.add_argument("--store-only", action="store_true", help="measure SqliteEngine alone instead")
    p.add_argument("--lone", type=int, default=300, help="store-only: lone chats timed one by one")
    p.add_argument("--flood", type=int, default=100_000, help="store-only: chats published at once")
    args = p.parse_args(argv)
    return store_only(args) if args.store_only else compare(args)


if __name__ == "__main__":
    sys.exit(main())
