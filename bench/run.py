"""Benchmark driver: roomchat (SQLite file, memory, a cluster on Redis) against the websockets
reference server, same scenarios, same run.

Each server's processes (servers.py: one roomchat, or two roomchat and their redis-server) are
pinned to CPU 0 and the load generator to CPU 1, so the server side's CPU time over the measured
window (user + sys, all threads, all processes) is its own and can be divided by the deliveries
the generator counted: µs of server CPU per delivery stays comparable even when the generator,
not the server, sets the pace.

    python bench/run.py                      # all scenarios, the default servers (10 to 15 minutes)
    python bench/run.py --scenarios S1,S3 --servers cluster,reference --duration 3
    python bench/run.py --quick              # about a second per scenario; numbers are not targets
    python bench/run.py --scenarios S2 --servers cluster,reference --rounds 3   # medians of 3 windows each

With `--rounds N` every server runs each scenario N times, the servers taking turns (round 1 in
the order given, round 2 in reverse, and so on), and the table keeps each server's median window:
a window's figure moves about 8% with the machine from one 5-second window to the next (a shared
VM), and adjacent, alternating windows keep the ratios about the code rather than the moment.
Every round's figure and its other load are printed and kept in the JSON (`rounds`,
`rounds_other_load_pct`), and every round's ratio to a target's base server is printed under the
table and kept in the JSON (`round_ratios`). N must be odd, so that the median is a window.

Prints one table (report.py) and writes the same figures as JSON to bench/results/<timestamp>.json
and the table as Markdown beside it.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import profiles as spy
import psutil
from report import evaluate, headline, headline_key, hop_costs, intact, markdown, round_ratios, table
from servers import (
    DEFAULT_SERVERS,
    LOADGEN_CPU,
    RATE_LIMITS,
    REDIS_PERSISTENCE,
    ROOT,
    SERVER_CPU,
    SERVERS,
    Group,
    available,
    pinned,
    redis_parser,
    redis_version,
    stop,
)

BENCH = Path(__file__).resolve().parent
QUIET_PCT = 15  # other load on a benchmark CPU above this spoils a run: wait for quiet, then retry
QUIET_WAIT_S = 10
BUILD = BENCH / ".build"
SETTLE_S = 10  # how long the generator waits, after the load, for what is still on its way (loadgen.c)
LINGER_US = 200  # --linger-us: how long the C generator polls before it blocks in saturate runs (loadgen.c)
REDIS_FLAGS = " ".join(a or "''" for a in REDIS_PERSISTENCE)


@dataclasses.dataclass
class Scenario:
    """One load shape; the fields map one to one onto loadgen.py options."""

    name: str
    mode: str  # saturate | rate | idle | probe
    rooms: int
    clients_per_room: int
    senders_per_room: int = 0
    inflight: int = 8
    rate: float = 0
    text_len: int = 48

    def loadgen_args(self, warmup, duration, linger_us=0):
        return [
            *(["--linger-us", str(linger_us)] if linger_us and self.mode == "saturate" else []),
            "--mode", self.mode, "--rooms", str(self.rooms),
            "--clients-per-room", str(self.clients_per_room),
            "--senders-per-room", str(self.senders_per_room), "--inflight", str(self.inflight),
            "--rate", str(self.rate), "--text-len", str(self.text_len),
            "--warmup", str(warmup), "--duration", str(duration),
        ]

    @property
    def connections(self):
        return self.rooms * self.clients_per_room

    @property
    def title(self):
        shape = f"{self.rooms} room{'s' * (self.rooms > 1)} x {self.clients_per_room} clients"
        senders = f"{self.senders_per_room} sender{'s' * (self.senders_per_room > 1)}/room"
        text = f", {self.text_len // 1024} KiB texts" if self.text_len >= 1024 else ""
        return {
            "saturate": f"saturate: {shape}, {senders} x {self.inflight} in flight{text}",
            "rate": f"latency: {shape}, {senders}, {self.rate:,.0f} msg/s open loop "
            f"({self.rate * self.clients_per_room:,.0f} deliveries/s)",
            "idle": f"idle: {self.connections:,} connections, {shape}",
            "probe": f"scale: {self.connections:,} connections, {shape}, chat round-trip probes",
        }[self.mode]


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("S1", "saturate", rooms=1, clients_per_room=50, senders_per_room=10),
        Scenario("S2", "saturate", rooms=20, clients_per_room=25, senders_per_room=1),
        Scenario("S3", "rate", rooms=10, clients_per_room=50, senders_per_room=5, rate=1500),
        Scenario("S4", "idle", rooms=100, clients_per_room=20),
        Scenario("S5", "saturate", rooms=1, clients_per_room=20, senders_per_room=2, text_len=32768),
        Scenario("S6", "probe", rooms=500, clients_per_room=20, senders_per_room=1),
    )
}
QUICK_ROOMS = {"S4": 10, "S6": 50}  # --quick: 200 and 1,000 connections instead of 2,000 and 10,000


# -- the load generator -----------------------------------------------------------------------------


def build_loadgen():
    """The C/epoll generator, compiled from loadgen.c into bench/.build/ when the source is newer;
    returns (command, description), or (None, reason) when gcc is missing or the build fails.
    Compiled under a name of this process's and thread's, then renamed into place: a bench started
    meanwhile (the test suite's workers run several at once) finds the old binary or the whole new
    one, never one that gcc is still writing."""
    source, binary = BENCH / "loadgen.c", BUILD / "loadgen"
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None, "gcc is not installed (apt-get install gcc)"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        building = BUILD / f".loadgen-{os.getpid()}-{threading.get_ident()}"
        try:
            done = subprocess.run([gcc, "-O2", "-o", str(building), str(source)], capture_output=True, text=True)
            if done.returncode:
                return None, f"gcc failed: {done.stderr.strip()[-300:]}"
            os.replace(building, binary)
        finally:
            building.unlink(missing_ok=True)
    version = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    return [str(binary)], f"C/epoll (loadgen.c, gcc {version})"


def loadgen_command(python_only=False):
    """(command, description): the C generator, or loadgen.py (one asyncio process) without gcc."""
    command, what = (None, "asked for (--python-loadgen)") if python_only else build_loadgen()
    if command is None:
        return [sys.executable, str(BENCH / "loadgen.py")], f"Python asyncio (loadgen.py; no C generator: {what})"
    return command, what


# -- running one server against one scenario ------------------------------------------------------


def sample(group):
    """The group's CPU seconds per role and every CPU's busy seconds, taken together."""
    cpu = group.cpu()
    busy = [c.user + c.nice + c.system + c.irq + c.softirq + c.steal for c in psutil.cpu_times(percpu=True)]
    return cpu, busy


def cpu_busy(seconds=0.5):
    """Each CPU's busy share over a short look, in percent."""
    before = psutil.cpu_times(percpu=True)
    time.sleep(seconds)
    after = psutil.cpu_times(percpu=True)
    return [100 * (1 - (a.idle - b.idle) / max(1e-9, sum(a) - sum(b))) for a, b in zip(after, before, strict=True)]


def wait_for_quiet(limit_pct=QUIET_PCT, patience=QUIET_WAIT_S):
    """Hold the next run while other work (a test suite, a build) keeps the benchmark CPUs busy;
    return the busy shares seen last, so a run started anyway says what it competed with."""
    deadline = time.monotonic() + patience
    while True:
        busy = cpu_busy()
        if max(busy[SERVER_CPU], busy[LOADGEN_CPU]) < limit_pct or time.monotonic() > deadline:
            return busy


def run_one(server_name, scenario, warmup, duration, workdir, generator, profile_to=None):
    """Run one scenario against one fresh server group; return its figures (or an "error" entry).
    `generator`: (command, linger_us). `profile_to`: a file for py-spy's stacks of the window
    (the first server process, when it is Python)."""
    group = Group(SERVERS[server_name], workdir)
    loadgen = spying = None
    try:
        urls = group.start()
        idle_rss = group.rss()
        lg_err = workdir / "loadgen.err"
        with open(lg_err, "wb") as err:
            loadgen = subprocess.Popen(
                [*pinned(LOADGEN_CPU), *generator[0],
                 *(a for url in urls for a in ("--url", url)), *scenario.loadgen_args(warmup, duration, generator[1])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, text=True,
            )
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in loadgen.stdout], daemon=True).start()
        budget = 30 + warmup + duration + scenario.connections / 100  # opening 10k takes a while
        deadline = time.monotonic() + budget
        figures, result = {}, None
        while result is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"loadgen gave no result within {budget:.0f} s") from None
            msg = json.loads(line)
            if msg["event"] == "mark" and msg["name"] == "connected":
                rss = group.rss()
                figures.update(
                    rss_mib=rss / 2**20,
                    kib_per_connection=(rss - idle_rss) / 1024 / max(1, msg["held"]),
                    threads=group.threads(),
                )
                loadgen.stdin.write("go\n")
                loadgen.stdin.flush()
            elif msg["event"] == "mark" and msg["name"] == "start":
                before = sample(group)
                if profile_to is not None and SERVERS[server_name].python:
                    spying = spy.record(group.pid(), duration, profile_to, pinned(LOADGEN_CPU))
            elif msg["event"] == "mark" and msg["name"] == "end":
                after = sample(group)
            elif msg["event"] == "result":
                result = msg
        figures["redis_servers"] = group.count("redis")
        exited = group.exited()
        if exited:
            figures["server_exit"] = f"exited during the run: {exited}"
        if "deliveries" in result:
            figures.update(cpu_figures(scenario, result, before, after))
        if spying is not None and spying.wait(30) == 0 and profile_to.exists():
            figures["profile"] = spy.summarise(profile_to)
        elif spying is not None:
            figures["profile_error"] = spying.stderr.read()[-300:]
        if exited or result.get("held") != result.get("wanted") or result.get("missing") or result.get("reordered"):
            figures["server_log"] = group.log_tail()
        for key, prefix in (("latency_ms", ""), ("probe_ms", "probe_")):
            for stat, value in (result.pop(key, None) or {}).items():
                if stat != "count":
                    figures[f"{prefix}{stat}_ms"] = value
        return {**result, **figures}
    except Exception as exc:  # one failed run must not stop the others
        return {"error": f"{type(exc).__name__}: {exc}", "server_log": group.log_tail()}
    finally:
        if loadgen is not None:
            stop(loadgen, patience=5)  # it closes its connections and exits after the result
        group.stop()


def cpu_figures(scenario, result, before, after):
    """Server CPU over the window, per delivery and per chat message (a message is delivered to
    every member of its room), with redis-server's share, and the other load on both CPUs."""
    window = result["window_s"]
    roles = {role: after[0][role] - before[0].get(role, 0.0) for role in after[0] if role != "sys"}
    cpu = sum(roles.values())
    deliveries = max(1, result["deliveries"])
    messages = deliveries / scenario.clients_per_room
    busy = [a - b for a, b in zip(after[1], before[1], strict=True)]
    figures = {
        "server_cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / window,
        "server_us_per_delivery": 1e6 * cpu / deliveries,
        "server_us_per_message": 1e6 * cpu / messages,
        "server_sys_pct": 100 * (after[0]["sys"] - before[0]["sys"]) / max(1e-9, cpu),
        # What else ran on the two CPUs during the window (other processes, steal):
        "other_load_pct": [
            round(max(0.0, 100 * (busy[SERVER_CPU] - cpu) / window), 1),
            round(max(0.0, 100 * (busy[LOADGEN_CPU] - result["loadgen_cpu_s"] - result.get("loadgen_spin_s", 0))
                          / window), 1),
        ],
    }
    if "redis" in roles:
        figures.update(
            redis_cpu_s=roles["redis"],
            redis_us_per_delivery=1e6 * roles["redis"] / deliveries,
            redis_us_per_message=1e6 * roles["redis"] / messages,
        )
    return figures


def measure(server_name, scenario, warmup, duration, workdir, retries, generator, wait=True, profile_to=None):
    """run_one once the CPUs are quiet; a rate or latency window that other load disturbed is run
    again (up to `retries` times) and the least disturbed run is kept. Other work (a test suite)
    may share the machine. S4/S6 are not repeated: opening 10,000 connections takes long, and
    their figures (memory, holding, a 50 ms bound) barely move with other load."""
    if scenario.mode not in ("saturate", "rate"):
        retries = 0
    runs = []
    for attempt in range(1 + retries):
        busy = wait_for_quiet() if wait else cpu_busy()
        run = run_one(server_name, scenario, warmup, duration, workdir / f"{scenario.name}-{server_name}-{attempt}",
                      generator, profile_to)
        run["busy_before_pct"] = [round(busy[SERVER_CPU]), round(busy[LOADGEN_CPU])]
        runs.append(run)
        if max(run.get("other_load_pct", [0])) < QUIET_PCT:
            break
    best = min(runs, key=lambda r: max(r.get("other_load_pct", [0])))
    best["attempts"] = len(runs)
    return best


def median_run(runs, mode):
    """The run that stands for a server's rounds: the median window by the mode's headline figure
    (deliveries/s when saturating, p99 latency at a rate; of two middles the less favourable), or
    the first run that is not intact (an error, a lost connection, a failed delivery check), so
    that no failure is hidden behind a median. Each run of the list keeps its own figures."""
    broken = [r for r in runs if not intact(r)]
    if broken:
        return broken[0]
    key = headline_key(mode)
    ordered = sorted(runs, key=lambda r: r.get(key) or 0, reverse=mode == "rate")  # the worst first at a rate
    return ordered[(len(ordered) - 1) // 2]


def round_figures(runs, mode):
    """Each round's headline figure, in round order (None where a round has none)."""
    return [r.get(headline_key(mode)) for r in runs]


def progress(run):
    """One line per run while the benchmark goes on."""
    if "error" in run:
        return f"ERROR {run['error']}"
    parts = [f"held {run['held']:,}/{run['wanted']:,}"]
    if "deliveries_per_s" in run:
        parts.append(f"{run['deliveries_per_s']:,.0f} deliveries/s, loadgen CPU {run['loadgen_cpu_pct']:.0f}%")
        if run.get("p99_ms") is not None:
            parts.append(f"p99 {run['p99_ms']:.2f} ms")
        parts.append("other load {:.0f}%/{:.0f}%".format(*run["other_load_pct"]))
    if run["attempts"] > 1:
        parts.append(f"{run['attempts']} attempts")
    return ", ".join(parts)


def notes(servers, generator_what, linger_us):
    """What the reader must know to read the table: how each server ran, where, with what."""
    lines = ["rate limits raised for the runs: roomchat started with " + " ".join(RATE_LIMITS)]
    linger = f", polling up to {linger_us} µs before it blocks in saturate runs" if linger_us else ""
    lines.append(f"load generator: {generator_what}{linger}")
    for name in servers:
        lines.append(f"{name}: {SERVERS[name].what}")
    clusters = [SERVERS[s] for s in servers if SERVERS[s].redis]
    if clusters:
        parsers = ", ".join(f"{c.name} {redis_parser(c.hiredis)}" for c in clusters)
        lines.append(f"redis-server {redis_version()} started by the bench for each run, persistence: AOF with "
                     f"appendfsync everysec, no RDB snapshots ({REDIS_FLAGS}); redis-py parser: {parsers}")
        lines.append("a Redis row's server CPU is all its roomchat processes plus its redis-server(s), all pinned "
                     "to the server CPU like a single server; clients alternate between the roomchat processes")
    for c in clusters:
        if c.masters:
            lines.append(f"{c.name}: {c.masters} redis-server --cluster-enabled yes joined by redis-cli --cluster "
                         f"create (no replicas); roomchat process i on node i")
    where = f"server processes on CPU {SERVER_CPU}, loadgen on CPU {LOADGEN_CPU}" if pinned(0) else "NOT pinned"
    lines.append(where)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="roomchat vs reference server benchmark")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, e.g. S1,S3")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help=f"comma-separated, run in this order; from {','.join(SERVERS)}")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--quick", action="store_true",
                        help="about 1 s per scenario and 1/10 of the connections in S4/S6 (smoke test)")
    parser.add_argument("--retries", type=int, default=1,
                        help=f"re-runs of a window in which other processes used more than {QUIET_PCT}%% of a CPU")
    parser.add_argument("--rounds", type=int, default=1,
                        help="windows per server and scenario (odd), servers taking turns; the table keeps each "
                        "median (saturate and rate scenarios)")
    parser.add_argument("--linger-us", type=int, default=LINGER_US,
                        help="C generator, saturate runs: µs it polls, finding nothing to read, before it blocks")
    parser.add_argument("--python-loadgen", action="store_true",
                        help="use loadgen.py (one asyncio process) instead of the C generator")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the Python servers over each window (stacks and summaries beside the results; "
                        "a profiled run's rates are not for the table)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/<timestamp>.json); "
                        "the Markdown table goes beside it (.md)")
    args = parser.parse_args(argv)

    try:
        scenarios = [SCENARIOS[s.strip().upper()] for s in args.scenarios.split(",")]
    except KeyError as exc:
        parser.error(f"unknown scenario {exc}; choose from {','.join(SCENARIOS)}")
    servers = [s.strip() for s in args.servers.split(",")]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {list(SERVERS)}")
    if args.rounds < 1 or args.rounds % 2 == 0:
        parser.error(f"--rounds {args.rounds}: give an odd number of rounds (1, 3, 5...): the median is a window")
    warmup, duration = (0.3, 1.0) if args.quick else (args.warmup, args.duration)
    retries = 0 if args.quick else args.retries  # --quick neither waits for quiet nor repeats
    if args.quick:
        scenarios = [dataclasses.replace(s, rooms=QUICK_ROOMS.get(s.name, s.rooms)) for s in scenarios]
    if not (ROOT / "roomchat.py").exists():
        print("# roomchat.py not found: running the reference only", flush=True)
        servers = [s for s in servers if SERVERS[s].reference]
    command, generator_what = loadgen_command(args.python_loadgen)
    python_generator = command[0] == sys.executable
    kept = []
    for name in servers:
        why = available(SERVERS[name])
        if why is None and python_generator and "socket.io" in SERVERS[name].path:
            why = "loadgen.py does not speak Socket.IO (the C generator does)"
        if why is None:
            kept.append(name)
        else:
            print(f"# {name} left out: {why}", flush=True)
    servers = kept

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or BENCH / "results" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = notes(servers, generator_what, 0 if python_generator else args.linger_us)
    report = {
        "started": stamp,
        "notes": lines,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "pinned": bool(pinned(0))},
        "options": {"servers": servers, "warmup_s": warmup, "duration_s": duration, "quick": args.quick,
                    "rounds": args.rounds},
        "commands": {s: SERVERS[s].commands("DIR", [f"redis://127.0.0.1:PORT{i}/0" for i in range(3)])
                     for s in servers},
        "scenarios": {},
    }
    for line in lines:
        print(f"# {line}", flush=True)
    with tempfile.TemporaryDirectory(prefix="roomchat-bench-") as tmp:
        for scenario in scenarios:
            taking_part = [s for s in servers if scenario.name not in SERVERS[s].skip]
            rounds = args.rounds if scenario.mode in ("saturate", "rate") else 1
            runs = {server: [] for server in taking_part}
            for turn in range(rounds):
                for server in taking_part if turn % 2 == 0 else taking_part[::-1]:
                    shown = f" (round {turn + 1} of {rounds})" if rounds > 1 else ""
                    print(f"# {scenario.name} {server}{shown} ...", end=" ", flush=True)
                    generator = (command, 0 if python_generator else args.linger_us)
                    profile_to = None
                    if args.profile:
                        profile_to = out.parent / f"{stamp}-profiles" / f"{scenario.name}-{server}-{turn}.txt"
                        profile_to.parent.mkdir(parents=True, exist_ok=True)
                    run = measure(server, scenario, warmup, duration, Path(tmp) / f"round{turn}", retries,
                                  generator, not args.quick, profile_to)
                    runs[server].append(run)
                    print(progress(run), flush=True)
            results = {server: median_run(server_runs, scenario.mode) for server, server_runs in runs.items()}
            if rounds > 1:
                for server, server_runs in runs.items():
                    results[server] = {**results[server], "rounds": round_figures(server_runs, scenario.mode),
                                       "rounds_other_load_pct": [r.get("other_load_pct") for r in server_runs]}
            report["scenarios"][scenario.name] = {
                "title": scenario.title,
                "mode": scenario.mode,
                "params": dataclasses.asdict(scenario),
                "results": results,
                "targets": evaluate(scenario, results),
            }
    report["redis_hop"] = hop_costs(report)
    report["round_ratios"] = round_ratios(report)

    footer = [
        *report["round_ratios"],
        "'>=' marks a rate measured with the load generator above 90% of a core: a lower bound; "
        "'FAIL (>=)' a missed rate target that is such a lower bound.",
        *(["Redis hop per chat message (server CPU, all processes):", *report["redis_hop"]]
          if report["redis_hop"] else []),
    ]
    if args.quick:
        footer.append("--quick: 1 s windows and 1/10 of the connections; the figures are not for the targets.")
    footer += [f"{name} {server}: not everything sent had come back {SETTLE_S:.0f} s after the load stopped "
               f"({run['total_sent']:,} chats sent; the missing count includes seqs others saw and it had not yet)"
               for name, entry in report["scenarios"].items() for server, run in entry["results"].items()
               if run.get("settled") is False]
    print()
    print(table(report, servers))
    print()
    for line in footer:
        print(f"# {line}")
    profiles = [line for name, entry in report["scenarios"].items() for server, run in entry["results"].items()
                if "profile" in run for line in spy.lines(f"{name} {server}", run["profile"])]
    for line in profiles:
        print(f"# {line}")
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join([
        f"`python bench/run.py` {stamp}, {platform.python_version()}, {os.cpu_count()} CPUs", "",
        markdown(report, servers), "", *(f"- {line}" for line in [*lines, *footer]), "",
        "Headline (README.md):", "", headline(report, servers), "",
        *(["```", *profiles, "```", ""] if profiles else []),
    ]))
    print(f"# JSON: {out}, Markdown: {out.with_suffix('.md')}")
    broken = [
        f"{name}/{server}"
        for name, entry in report["scenarios"].items()
        for server, run in entry["results"].items()
        if not intact(run)
    ]
    ours = [b for b in broken if not SERVERS[b.split("/")[1]].peer]
    if broken:
        print(f"# errors, lost connections or failed delivery checks: {', '.join(broken)}")
    if len(ours) < len(broken):
        print("# (a peer's failure is reported, not a failure of the bench: the exit status is about roomchat's rows)")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())
