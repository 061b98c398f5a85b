"""Targets, verdicts and the printed tables of the benchmark (plain text and Markdown).

Every ratio is a server's figure divided by the reference's in the same run.
"""

# -- targets ------------------------------------------------------------------------------------
# (server, scenario, metric, label, kind, bound, base). "ratio>=" / "ratio<=" compare server / base
# (the reference unless named); "<=" / "<" compare the server's own figure with the bound; "all"
# wants every connection held. A target whose base did not run is left out.
TARGETS = [
    ("roomchat", "S1", "deliveries_per_s", ">= 5x ref", "ratio>=", 5.0, "reference"),
    ("roomchat", "S1", "deliveries_per_s", ">= 2x socketio", "ratio>=", 2.0, "socketio"),
    ("roomchat", "S1", "deliveries_per_s", ">= 0.5x bun", "ratio>=", 0.5, "bun"),
    ("roomchat", "S1", "server_us_per_delivery", "<= 0.2x ref", "ratio<=", 0.2, "reference"),
    ("roomchat", "S2", "deliveries_per_s", ">= 5x ref", "ratio>=", 5.0, "reference"),
    ("roomchat", "S2", "deliveries_per_s", ">= 2x socketio", "ratio>=", 2.0, "socketio"),
    ("roomchat", "S2", "server_us_per_delivery", "<= 0.2x ref", "ratio<=", 0.2, "reference"),
    ("roomchat", "S3", "p99_ms", "<= ref", "ratio<=", 1.0, "reference"),
    ("roomchat", "S4", "kib_per_connection", "<= 32 KiB", "<=", 32, None),
    ("roomchat", "S5", "deliveries_per_s", ">= 1.5x ref", "ratio>=", 1.5, "reference"),
    ("roomchat", "S6", "held", "holds all", "all", None, None),
    ("roomchat", "S6", "probe_max_ms", "< 50 ms", "<", 50, None),
    ("cluster", "S1", "deliveries_per_s", ">= 1.2x ref", "ratio>=", 1.2, "reference"),
    ("cluster", "S2", "deliveries_per_s", ">= 2x ref", "ratio>=", 2.0, "reference"),
    ("cluster", "S3", "p99_ms", "<= 1.5x roomchat", "ratio<=", 1.5, "roomchat"),
]
COMPARE = {
    "ratio>=": lambda v, b: v >= b,
    "ratio<=": lambda v, b: v <= b,
    "<=": lambda v, b: v <= b,
    "<": lambda v, b: v < b,
}
CHECKS_TARGET = "0/0/0"  # missing/reordered/errors, for every server

# Rows of the table per mode: (metric, label, format, show the ratio to the reference).
LOAD_ROWS = [
    ("held_of", "connections held to the end", "{}", False),
    ("loadgen_cpu_pct", "loadgen CPU %", "{:.0f}", False),
    ("other_load", "other load on CPU 0/1 %", "{}", False),
    ("checks", "missing/reordered/errors", "{}", False),
]
CPU_ROWS = [
    ("server_us_per_delivery", "server CPU µs/delivery", "{:.2f}", True),
    ("redis_us_per_delivery", "  of which redis-server", "{:.2f}", False),
    ("server_us_per_message", "server CPU µs/chat message", "{:.1f}", True),
]
ROWS = {
    "saturate": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", True),
        *CPU_ROWS,
        ("server_cpu_pct", "server CPU %", "{:.0f}", False),
        ("server_sys_pct", "  of which kernel (sys) %", "{:.0f}", False),
        *LOAD_ROWS,
    ],
    "rate": [
        ("deliveries_per_s", "deliveries/s", "{:,.0f}", True),
        ("p50_ms", "latency p50 ms", "{:.2f}", True),
        ("p90_ms", "latency p90 ms", "{:.2f}", True),
        ("p99_ms", "latency p99 ms", "{:.2f}", True),
        ("max_ms", "latency max ms", "{:.2f}", True),
        *CPU_ROWS,
        *LOAD_ROWS,
    ],
    "idle": [
        ("held", "connections held", "{:,}", False),
        ("kib_per_connection", "KiB RSS per connection", "{:.1f}", True),
        ("threads", "server threads", "{:,}", False),
    ],
    "probe": [
        ("held", "connections held", "{:,}", False),
        ("connect_s", "seconds to open all", "{:.1f}", True),
        ("probe_p50_ms", "probe round trip p50 ms", "{:.2f}", True),
        ("probe_max_ms", "probe round trip max ms", "{:.2f}", True),
        ("rss_mib", "server RSS MiB", "{:.0f}", True),
        ("kib_per_connection", "KiB RSS per connection", "{:.1f}", True),
        ("threads", "server threads", "{:,}", False),
        *LOAD_ROWS[2:],
    ],
}


def fmt(value, pattern, limited=False):
    if value is None:
        return "-"
    text = pattern.format(value)
    return f">={text}" if limited else text


def ratio(results, server, metric, base="reference"):
    try:
        return results[server][metric] / results[base][metric]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def verdict(results, connections, server, kind, metric, bound, base="reference"):
    """PASS / FAIL for one server against one target, with the ratio it met or missed ("PASS 7.4x"),
    or "-" when a figure is missing. A rate that misses while the generator was the limit is a
    lower bound: "FAIL (>=)"; a ratio over a base the generator limited is an upper bound: "(<=)"."""
    run = results.get(server, {})
    if kind == "all":
        return "-" if "held" not in run else "PASS" if run["held"] == connections else "FAIL"
    value = ratio(results, server, metric, base) if kind.startswith("ratio") else run.get(metric)
    if value is None:
        return "-"
    shown = f" {value:.2f}x" if kind.startswith("ratio") else ""
    if metric == "deliveries_per_s" and results.get(base or "", {}).get("loadgen_limited"):
        shown += " (<=)"
    if COMPARE[kind](value, bound):
        return "PASS" + shown
    return ("FAIL (>=)" if metric == "deliveries_per_s" and run.get("loadgen_limited") else "FAIL") + shown


def checks(run):
    """missing/reordered/errors as one cell; None when the mode sends nothing."""
    if "missing" not in run:
        return None
    return f"{run['missing']}/{run['reordered']}/{run['errors']}"


def intact(run):
    """No error, every delivery checked out and, under load, every connection held to the end."""
    if "error" in run or "server_exit" in run or checks(run) not in (None, CHECKS_TARGET):
        return False
    return "deliveries_per_s" not in run or run.get("held") == run.get("wanted")


def cell_value(run, metric):
    if metric == "checks":
        return checks(run)
    if metric == "held_of":
        return f"{run['held']:,}/{run['wanted']:,}" if "held" in run else None
    if metric == "other_load":
        return "/".join(f"{x:.0f}" for x in run["other_load_pct"]) if "other_load_pct" in run else None
    return run.get(metric)


def evaluate(scenario, results):
    """Target verdicts for one scenario: {metric: [{server, target, result}]}; "checks" covers all."""
    verdicts = {}
    for server, name, metric, label, kind, bound, base in TARGETS:
        if name == scenario.name and server in results and (base is None or base in results):
            result = verdict(results, scenario.connections, server, kind, metric, bound, base)
            verdicts.setdefault(metric, []).append({"server": server, "target": label, "result": result})
    if scenario.mode != "idle":
        bad = [s for s, run in results.items() if not intact(run)]
        verdicts["checks"] = [{"server": "all", "target": CHECKS_TARGET,
                               "result": "FAIL " + ",".join(bad) if bad else "PASS"}]
    return verdicts


def headline_key(mode):
    """The figure that stands for a window of a scenario in `mode` when rounds are compared: p99
    latency at a rate, deliveries/s otherwise."""
    return "p99_ms" if mode == "rate" else "deliveries_per_s"


def round_ratios(report):
    """For runs with --rounds: each ratio target's figure round by round (round i of the server
    over round i of its base, both windows of the same round), beside the ratio of the medians
    that the table and the verdict use. Only targets on the figure the rounds keep (`rounds`:
    deliveries/s when saturating, p99 at a rate)."""
    lines = []
    for name, entry in report["scenarios"].items():
        results = entry["results"]
        kept = headline_key(entry.get("mode"))
        for server, scenario, metric, label, kind, _bound, base in TARGETS:
            if scenario != name or not kind.startswith("ratio") or not results.get(server, {}).get("rounds"):
                continue
            if metric != kept or "rounds" not in results.get(base, {}):
                continue
            pairs = zip(results[server]["rounds"], results[base]["rounds"], strict=True)
            each = [f"{a / b:.2f}x" if a and b else "-" for a, b in pairs]
            median = ratio(results, server, metric, base)
            shown = f"{median:.2f}x" if median is not None else "-"
            lines.append(f"{name} {server} {label}, round by round: {', '.join(each)} (medians: {shown})")
    return lines


def hop_costs(report):
    """What the Redis hop adds per chat message: each cluster row's server CPU per message minus
    the single-process rows' (memory and SQLite), with redis-server's own share, per scenario."""
    lines = []
    for name, entry in report["scenarios"].items():
        if entry["mode"] not in ("saturate", "rate"):
            continue  # S6's probes are a trickle on 10,000 idle connections: no per-message figure
        results = entry["results"]
        for cluster in (s for s in results if "redis_us_per_message" in results[s]):  # the Redis rows
            run = results[cluster]
            parts = [f"{name} {cluster}: {run['server_us_per_message']:.1f} µs/message in all "
                     f"(redis-server {run['redis_us_per_message']:.1f})"]
            for single in ("roomchat-memory", "roomchat"):
                base = results.get(single, {}).get("server_us_per_message")
                if base is not None:
                    parts.append(f"hop = {run['server_us_per_message'] - base:.1f} over {single} ({base:.1f})")
            lines.append("; ".join(parts))
    return lines


def rows(report, servers):
    """The header and the rows shared by both renderings; a title row has two cells."""
    compare = "reference" in servers and len(servers) > 1
    head = ["scenario", "metric"]
    for server in servers:
        head += [server, "x ref"] if compare and server != "reference" else [server]
    head += ["target", "result"]
    out = []
    for name, entry in report["scenarios"].items():
        results = entry["results"]
        out.append([name, entry["title"]])
        for metric, label, pattern, show_ratio in ROWS[entry["mode"]]:
            if all(cell_value(results.get(s, {}), metric) is None for s in servers):
                continue  # e.g. redis-server's share with no cluster in the run
            row = ["", label]
            for server in servers:
                run = results.get(server, {})
                limited = metric == "deliveries_per_s" and run.get("loadgen_limited")
                row.append("ERROR" if "error" in run else fmt(cell_value(run, metric), pattern, limited))
                if compare and server != "reference":
                    r = ratio(results, server, metric) if show_ratio else None
                    row.append(f"{r:.2f}x" if r is not None else "")
            targets = entry["targets"].get(metric, [])
            who = [f"{t['server']} " if t["server"] not in ("roomchat", "all") else "" for t in targets]
            row.append(", ".join(f"{w}{t['target']}" for w, t in zip(who, targets, strict=True)))
            row.append(", ".join(f"{w}{t['result']}" for w, t in zip(who, targets, strict=True)))
            out.append(row)
        out += [["", f"{s} error", run[key]] for s, run in results.items() for key in ("error", "server_exit")
                if key in run]
    return head, out


def table(report, servers):
    """Plain text: columns padded to width."""
    head, body = rows(report, servers)
    full = [head, *(r for r in body if len(r) == len(head))]  # title and error rows may overflow
    widths = [max(len(r[i]) for r in full) for i in range(len(head))]

    def line(row):
        cells = zip(row, widths, strict=False)
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells)).rstrip()

    return "\n".join(line(row) for row in [head, *body])


def markdown(report, servers):
    """The same table in Markdown, for README.md and bench/README.md."""
    head, body = rows(report, servers)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in body:
        if len(row) == 2:  # a scenario title
            row = [f"**{row[0]}**", f"**{row[1]}**"]
        cells = [c.replace("|", "\\|") for c in row] + [""] * (len(head) - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The headline rows README.md quotes: (scenario, metric, label, format).
HEADLINE = [
    ("S1", "deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("S1", "server_us_per_delivery", "server CPU µs/delivery", "{:.2f}"),
    ("S2", "deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("S2", "server_us_per_delivery", "server CPU µs/delivery", "{:.2f}"),
    ("S3", "p99_ms", "latency p99 ms", "{:.2f}"),
    ("S4", "kib_per_connection", "KiB RSS per idle connection", "{:.1f}"),
    ("S5", "deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("S5", "server_us_per_delivery", "server CPU µs/delivery", "{:.2f}"),
    ("S6", "probe_max_ms", "10,000 connections: probe max ms", "{:.2f}"),
]


def headline(report, servers):
    """A compact Markdown table of the headline figures, each with its ratio to the reference,
    and each target's verdict: what README.md's Performance section shows."""
    lines = ["| scenario | metric | " + " | ".join(servers) + " | targets |", "|" + "---|" * (len(servers) + 3)]
    for name, metric, label, pattern in HEADLINE:
        entry = report["scenarios"].get(name)
        if entry is None:
            continue
        results = entry["results"]
        cells = []
        for server in servers:
            run = results.get(server, {})
            value = run.get(metric)
            if value is None:
                cells.append("ERROR" if "error" in run else "-")
                continue
            text = fmt(value, pattern, metric == "deliveries_per_s" and run.get("loadgen_limited"))
            r = ratio(results, server, metric) if server != "reference" else None
            cells.append(f"{text} ({r:.2f}x)" if r is not None else text)
        verdicts = ", ".join(f"{t['target']}: {t['result']}" for t in entry["targets"].get(metric, []))
        lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {verdicts} |")
    return "\n".join(lines)
