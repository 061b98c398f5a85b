"""Smoke test of the benchmark harness (bench/run.py): a harness check, not a timing."""

import importlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import held_port, require_program, wait_for

ROOT = Path(__file__).resolve().parents[1]


def quick_bench(tmp_path, servers, scenarios, timeout=110, more=()):
    """bench/run.py --quick for these servers and scenarios (and `more` options); returns its JSON report."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "bench/run.py", "--quick", "--servers", servers, "--scenarios", scenarios, "--out", out,
               *more]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.mark.timeout(120)
def test_quick_bench_run_checks_every_delivery(tmp_path):
    """A one-second S1 against roomchat delivers chat events, none missing and none out of order."""
    if not (ROOT / "roomchat.py").exists():
        pytest.skip("roomchat.py does not exist yet: nothing to benchmark")
    run = quick_bench(tmp_path, "roomchat", "S1")["scenarios"]["S1"]["results"]["roomchat"]
    assert "error" not in run, run
    assert run["deliveries"] > 0
    assert run["missing"] == 0
    assert run["reordered"] == 0
    assert run["errors"] == 0


@pytest.mark.timeout(120)
def test_quick_cluster_bench_delivers_in_order_across_processes(tmp_path):
    """One-second S1 and S2 on two roomchat processes sharing a redis-server, clients alternating
    between them: every client on either process gets every chat of its room, in seq order."""
    require_program("redis-server", "apt-get install redis-server")
    report = quick_bench(tmp_path, "cluster", "S1,S2")
    for name, per_server in (("S1", [25, 25]), ("S2", [250, 250])):
        run = report["scenarios"][name]["results"]["cluster"]
        assert "error" not in run, run
        assert run["held_per_server"] == per_server  # clients on both processes
        assert run["held"] == run["wanted"]
        assert run["deliveries"] > 0
        assert run["silent_clients"] == 0
        assert (run["missing"], run["reordered"], run["errors"]) == (0, 0, 0)
        assert run["redis_cpu_s"] > 0  # the bench measured its own redis-server


@pytest.mark.timeout(150)
def test_quick_redis_cluster_bench_delivers_in_order_across_nodes(tmp_path):
    """One-second S1 and S2 on three roomchat processes, each on its own master of a 3-master Redis
    Cluster the bench starts, clients spread over the three: every chat reaches every member in
    seq order."""
    require_program("redis-server", "apt-get install redis-server")
    require_program("redis-cli", "apt-get install redis-tools")
    report = quick_bench(tmp_path, "redis-cluster", "S1,S2", timeout=140)
    for name, per_server in (("S1", [17, 17, 16]), ("S2", [167, 167, 166])):
        run = report["scenarios"][name]["results"]["redis-cluster"]
        assert "error" not in run, run
        assert run["redis_servers"] == 3  # the cluster's three masters, measured with the row
        assert run["held_per_server"] == per_server  # clients on all three processes
        assert run["held"] == run["wanted"]
        assert run["deliveries"] > 0
        assert run["silent_clients"] == 0
        assert (run["missing"], run["reordered"], run["errors"]) == (0, 0, 0)
        assert run["redis_cpu_s"] > 0


def test_one_redis_targets_are_judged_against_the_reference_and_one_process(monkeypatch):
    """The one-Redis row's S2 target is 2x the reference's deliveries/s and its S3 target 1.5x
    the single roomchat process's p99, both from the same run."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    run, report = importlib.import_module("run"), importlib.import_module("report")
    s2 = {"reference": {"deliveries_per_s": 100.0}, "cluster": {"deliveries_per_s": 210.0}}
    assert report.evaluate(run.SCENARIOS["S2"], s2)["deliveries_per_s"] == [
        {"server": "cluster", "target": ">= 2x ref", "result": "PASS 2.10x"}]
    s3 = {"roomchat": {"p99_ms": 2.0}, "cluster": {"p99_ms": 3.2}}
    assert report.evaluate(run.SCENARIOS["S3"], s3)["p99_ms"] == [
        {"server": "cluster", "target": "<= 1.5x roomchat", "result": "FAIL 1.60x"}]


def test_rounds_keep_the_median_window_and_show_a_failed_round(monkeypatch):
    """With --rounds, a server's median window stands for it (by deliveries/s when saturating, by
    p99 at a rate, the less favourable of two middles), a round with missing deliveries is the one
    shown whatever its rate, and the footer gives each round's ratio beside the medians'."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    run, report = importlib.import_module("run"), importlib.import_module("report")
    clean = {"missing": 0, "reordered": 0, "errors": 0, "held": 500, "wanted": 500}
    windows = [{**clean, "deliveries_per_s": rate} for rate in (300.0, 100.0, 200.0)]
    assert run.median_run(windows, "saturate")["deliveries_per_s"] == 200.0
    assert run.median_run(windows[:2], "saturate")["deliveries_per_s"] == 100.0  # two middles: the lower
    latencies = [{**clean, "p99_ms": p99} for p99 in (3.0, 1.0)]
    assert run.median_run(latencies, "rate")["p99_ms"] == 3.0  # two middles: the higher
    lost = {**clean, "deliveries_per_s": 250.0, "missing": 8}
    assert run.median_run([*windows, lost], "saturate") is lost
    results = {"cluster": {"deliveries_per_s": 210.0, "rounds": [210.0, 190.0, 230.0]},
               "reference": {"deliveries_per_s": 100.0, "rounds": [100.0, 100.0, 100.0]}}
    lines = report.round_ratios({"scenarios": {"S2": {"mode": "saturate", "results": results}}})
    assert lines == ["S2 cluster >= 2x ref, round by round: 2.10x, 1.90x, 2.30x (medians: 2.10x)"]


@pytest.mark.timeout(150)
def test_rounds_take_turns_and_report_every_round(tmp_path):
    """--rounds 3 against roomchat and the reference: three windows each, every round's figure and
    other load kept, the target's round-by-round ratios in the report; an even count is refused."""
    if not (ROOT / "roomchat.py").exists():
        pytest.skip("roomchat.py does not exist yet: nothing to benchmark")
    report = quick_bench(tmp_path, "roomchat,reference", "S1", timeout=140, more=("--rounds", "3"))
    results = report["scenarios"]["S1"]["results"]
    for server in ("roomchat", "reference"):
        assert len(results[server]["rounds"]) == 3 and all(results[server]["rounds"]), results[server]
        assert len(results[server]["rounds_other_load_pct"]) == 3
        assert results[server]["deliveries_per_s"] == sorted(results[server]["rounds"])[1]
        assert (results[server]["missing"], results[server]["reordered"]) == (0, 0)
    assert [line.split(",")[0] for line in report["round_ratios"]] == ["S1 roomchat >= 5x ref"]
    even = subprocess.run([sys.executable, "bench/run.py", "--quick", "--rounds", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert even.returncode == 2 and "odd number of rounds" in even.stderr


@pytest.mark.timeout(60)
def test_store_bench_drives_the_sqlite_engine_alone():
    """store_bench.py --store-only publishes through SqliteEngine and counts what the hub gets
    back, for synchronous NORMAL and FULL (so it follows the engine interface)."""
    command = [sys.executable, "bench/store_bench.py", "--store-only", "--lone", "20", "--flood", "2000"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == {"NORMAL", "FULL"}, proc.stdout
    assert all(float(row[2].replace(",", "")) > 0 for row in rows.values())  # flood events/s


def test_loadgen_counts_gaps_and_reordering(monkeypatch):
    """The load generator's check counts a skipped seq as missing and a lower one as reordered."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    loadgen = importlib.import_module("loadgen")

    class Gen:
        host, port = "127.0.0.1", 1

    client = loadgen.Client(Gen(), b"r1")
    client.upgraded = client.joined = True
    frames = []
    for seq in (1, 2, 4, 3, 5):  # 3 arrives late: counted missing when 4 shows, then reordered
        event = b'{"type": "chat", "room": "r1", "from": "guest-2", "text": "hi", "seq": %d, "ts": 1.5}' % seq
        frames.append(bytes((0x81, len(event))) + event)
    blob = b"".join(frames)
    client.data_received(blob[:7])  # a frame split across reads
    client.data_received(blob[7:])
    assert (client.deliveries, client.missing, client.reordered) == (5, 1, 1)


# A stand-in for gcc: writes its output in two steps; the first compile waits between them until
# the test lets it go ("go"), any later one runs straight through.
SLOW_GCC = """#!/bin/sh
if [ "$1" = -dumpfullversion ]; then echo 0.0; exit 0; fi
printf '#!/bin/sh\\n' > "$3"
if [ ! -e "$STEPS/started" ]; then
  touch "$STEPS/started"
  n=0
  while [ ! -e "$STEPS/go" ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n + 1)); done
fi
printf 'echo loadgen\\n' >> "$3"
"""


def test_a_bench_never_runs_a_loadgen_another_is_still_compiling(tmp_path, monkeypatch):
    """While one bench's gcc is still writing the C generator, another bench (the suite's other
    worker) gets the whole binary, not the half written; the first one's ends whole too."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    run = importlib.import_module("run")
    (tmp_path / "bin").mkdir()
    gcc = tmp_path / "bin" / "gcc"
    gcc.write_text(SLOW_GCC)
    gcc.chmod(0o755)
    (tmp_path / "loadgen.c").write_text("int main(void) { return 0; }\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STEPS", str(tmp_path))
    monkeypatch.setattr(run, "BENCH", tmp_path)
    monkeypatch.setattr(run, "BUILD", tmp_path / ".build")
    first = []
    compiling = threading.Thread(target=lambda: first.append(run.build_loadgen()))
    compiling.start()
    try:
        wait_for(lambda: (tmp_path / "started").exists(), timeout=30)
        command, _ = run.build_loadgen()
        assert Path(command[0]).read_text() == "#!/bin/sh\necho loadgen\n"
    finally:
        (tmp_path / "go").touch()
        compiling.join(60)
    assert Path(first[0][0][0]).read_text() == "#!/bin/sh\necho loadgen\n"
    assert sorted(p.name for p in (tmp_path / ".build").iterdir()) == ["loadgen"]  # no half-built file left


@pytest.mark.parametrize("cluster", [False, True], ids=["redis-server", "cluster node"])
@pytest.mark.parametrize("holder", ["another Redis", "a bound socket"])
def test_a_bench_redis_whose_port_was_taken_meanwhile_starts_on_another(tmp_path, monkeypatch, ports_taken_first,
                                                                        redis_server, holder, cluster):
    """A free port found for the bench's redis-server (or Redis Cluster node) but taken before it
    binds it, by another Redis answering there or by a socket bound there (it exits, the address
    in use), is not taken for its own: it starts on another port and answers there as itself."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    servers, common = importlib.import_module("servers"), importlib.import_module("common")
    with held_port() as bound:
        taken = redis_server.port if holder == "another Redis" else bound
        ports_taken_first(taken, common=common)
        group = servers.Group(servers.SERVERS["redis-cluster" if cluster else "cluster"], tmp_path)
        try:
            (tmp_path / "node").mkdir()
            port = group._start_redis(timeout=15, cluster=tmp_path / "node" if cluster else None)
            assert port != taken and group.count("redis") == 1
            assert servers.redis_ask(port, lambda c: c.info("server")["process_id"]) == group.procs[0][1].pid
        finally:
            group.stop()


@pytest.mark.timeout(300)
def test_quick_bench_peers_deliver_in_order(tmp_path):
    """Socket.IO, Flask-SocketIO and Bun, installed on demand into bench/.peers/, run a one-second
    S1 against the C generator: every chat reaches every member in seq order."""
    require_program("node", "apt-get install nodejs")
    require_program("npm", "apt-get install npm")
    require_program("gcc", "apt-get install gcc")
    report = quick_bench(tmp_path, "socketio,flask-socketio,bun", "S1", timeout=280)
    for server in ("socketio", "flask-socketio", "bun"):
        run = report["scenarios"]["S1"]["results"][server]
        assert "error" not in run, run
        assert run["held"] == run["wanted"] == 50
        assert run["deliveries"] > 0 and run["silent_clients"] == 0
        assert (run["missing"], run["reordered"], run["errors"]) == (0, 0, 0)
    assert "C/epoll" in " ".join(report["notes"])


def test_node_peers_are_left_out_without_node(monkeypatch):
    """Without node or npm, a Node peer is unavailable with a one-line reason that says how to get it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    servers = importlib.import_module("servers")
    monkeypatch.setattr(servers.peers.shutil, "which", lambda name, *a, **k: None)
    assert servers.available(servers.SERVERS["bun"]) == "node is not installed (apt-get install nodejs npm)"
    assert servers.available(servers.SERVERS["socketio"]).startswith("node is not installed")
    assert servers.available(servers.SERVERS["reference"]) is None
