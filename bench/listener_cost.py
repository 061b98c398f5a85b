"""Instructions per room event on a Redis listener's path, counted by valgrind (callgrind): the
same count for the same code whatever else the machine is doing, so a change to that path can be
judged on a busy machine, where a timed window cannot.

    .venv/bin/python bench/listener_cost.py            # both counts, 200 batches (needs valgrind)
    .venv/bin/python bench/listener_cost.py --run 200  # the workload alone (what valgrind runs)

The workload: 20 rooms of 12 members each (fake connections whose sends cost nothing), and batches
of 10 pub/sub messages of 8 chats each, as a process of the `cluster` bench row receives them in
S2. `place` is RedisEngine._place (the message parsed into (room, event, Meta) items), `deliver`
is Registry.deliver (the broadcast, each event encoded once, each member's frames joined). Sockets
and system calls are not in either count: this is the Python side only.
"""

import functools
import os
import re
import subprocess
import sys
import threading
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workload(batches: int) -> int:
    """Run `batches` batches; returns the events delivered. `place` runs inside map() and `deliver`
    inside filter(), so callgrind can count each (--toggle-collect=map_next / filter_next)."""
    sys.path.insert(0, str(ROOT))
    import orjson

    from chatserver import protocol
    from chatserver.config import Config
    from chatserver.engines.memory import MemoryEngine
    from chatserver.engines.redis import RedisEngine
    from chatserver.rooms.client import TokenBucket
    from chatserver.rooms.registry import Registry

    class Conn:
        def send_frame(self, frame, own=0):
            pass

        def pace(self):
            pass

        def backlog(self):
            return 0

    registry = Registry(MemoryEngine(), Config().limits())
    rooms = [f"room{r}" for r in range(20)]
    for room in rooms:
        for _ in range(12):
            registry.join(registry.connect(Conn(), TokenBucket(20, 5)), room)
    engine = types.SimpleNamespace(_lock=threading.Lock(), _last=dict.fromkeys(rooms),
                                   _fill=lambda *a: [], _check_seq=lambda *a: None)
    seqs = dict.fromkeys(rooms, 1000)

    def message(room: str) -> bytes:
        lines = []
        for j in range(8):
            seqs[room] += 1
            lines.append(orjson.dumps(["another-process", 7, j, None, False, f"k{seqs[room]}"]))
            lines.append(orjson.dumps(protocol.chat_event(room, "sender", "x" * 60, seqs[room])))
        return b"\n".join(lines)

    batches_of = [[(rooms[(r * 2 + i) % 20], None) for r in range(10)] for i in range(batches)]
    batches_of = [[(room, message(room)) for room, _ in batch] for batch in batches_of]
    deliver = functools.partial(filter, lambda items: registry.deliver(items))

    def step(batch):
        items = []
        for room, data in batch:
            items += RedisEngine._place(engine, room, data)
        list(deliver([items]))
        return len(items)

    return sum(map(step, batches_of))


def count(batches: int, *toggles: str) -> float:
    out = Path(f"/tmp/listener-cost-{os.getpid()}.out")
    try:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no", *[f"--toggle-collect={t}" for t in toggles],
             f"--callgrind-out-file={out}", sys.executable, __file__, "--run", str(batches)],
            capture_output=True, text=True, check=True)
    finally:
        out.unlink(missing_ok=True)
    events = int(re.search(r"events (\d+)", done.stdout).group(1))
    return int(re.search(r"Collected : (\d+)", done.stderr).group(1)) / events


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        print(f"events {workload(int(sys.argv[2]))}")
        return
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    place = count(batches, "map_next", "filter_next")  # map_next on, deliver's filter_next off again
    deliver = count(batches, "filter_next")
    print(f"instructions per event: place {place:,.0f}, deliver {deliver:,.0f}, both {place + deliver:,.0f}")


if __name__ == "__main__":
    main()
