"""Where a Python server's time goes: py-spy samples during the measured window, summarised.

    python bench/run.py --profile --scenarios S1 --servers roomchat     # profiles beside the results

py-spy (pinned in requirements-dev.txt) attaches to the server process for the window and samples,
without pausing the process (--nonblocking), the thread that holds the GIL (--gil): the Python
work. Sampling every runnable thread instead would count the hundreds of reader threads that wait
for the core or the GIL as if they ran. The kernel's share (send and recv run without the GIL)
is the "server sys %" row of the table. It writes collapsed stacks ("frame;frame;... count"). It runs on the load
generator's CPU, so the server's core is its own; the rates of a profiled run are still not for
the table. summarise() turns the stacks into the two lists bench/README.md quotes: where the
samples were (the innermost frame, "self") and what they were under (each function counted once
per stack, "total").
"""

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy():
    """The py-spy executable next to this Python, or on PATH, or None."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid, seconds, out, prefix=(), rate=250):
    """Start py-spy on `pid` for `seconds`, collapsed stacks to `out`; returns the Popen.
    `prefix`: a command prefix (CPU pinning). Raises FileNotFoundError without py-spy."""
    binary = py_spy()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed (pip install -r requirements-dev.txt)")
    return subprocess.Popen(
        [*prefix, binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--format", "raw", "--nonblocking", "--gil", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def short(frame, line=False):
    """'Hub.deliver (chatserver/rooms/hub.py:117)' -> 'Hub.deliver (rooms/hub.py)', or with
    line=True 'Hub.deliver (rooms/hub.py:117)'."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for cut in ("chatserver/", "site-packages/", "lib/python3"):
        if cut in path:
            path = path.split(cut, 1)[1]
    where = f"{path}:{match['line']}" if line and match["line"] else path
    return f"{match['func']} ({where})"


def summarise(raw_path, top=12):
    """{"samples": N, "self": [(frame, pct)], "total": [(frame, pct)]} from py-spy's raw output,
    the top `top` of each, in percent of all samples: "self" by line, "total" by function.
    Raises OSError when the file is missing."""
    own, under = collections.Counter(), collections.Counter()
    samples = 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = [f for f in stack.split(";") if f]
        if not raw:
            continue
        frames = [short(f) for f in raw]
        samples += n
        own[short(raw[-1], line=True)] += n
        for frame in set(frames):
            under[frame] += n
    pct = (lambda items: [(f, round(100 * n / samples, 1)) for f, n in items]) if samples else (lambda items: [])
    return {"samples": samples, "self": pct(own.most_common(top)), "total": pct(under.most_common(top * 2))}


def lines(name, summary):
    """The summary as text lines for the console and the Markdown file."""
    out = [f"{name}: {summary['samples']:,} samples"]
    out += [f"  self  {p:5.1f}%  {f}" for f, p in summary["self"]]
    out += [f"  total {p:5.1f}%  {f}" for f, p in summary["total"] if not f.startswith(("Thread.", "BaseServer.",
                                                                                       "ThreadingMixIn.", "<module>"))]
    return out
