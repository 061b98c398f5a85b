"""Concurrent history reads on a real server process (issue 10, item 4): 600 clients asking at
once share a fixed pool of SQLite readers, so descriptors and memory stay bounded, and idle
readers are closed afterwards."""

import threading

import psutil
import pytest

from chatserver.engines.sqlite_readers import POOL_SIZE
from tests.helpers import RawClient, wait_for

CLIENTS = 600
MIB = 2**20


def next_of(client: RawClient, kind: str) -> dict:
    """The next event of type `kind` (presence events of the others joining come in between)."""
    while (event := client.read_json())["type"] != kind:
        pass
    return event


class Sampler(threading.Thread):
    """Samples a process's open descriptors and RSS every 20 ms until stopped; keeps the maxima."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.max_fds = self.max_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.max_fds = max(self.max_fds, self.process.num_fds())
            self.max_rss = max(self.max_rss, self.process.memory_info().rss)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_600_concurrent_history_reads_keep_descriptors_and_memory_bounded(spawn, tmp_path):
    """600 members asking for 200 events of history at the same moment: every one gets its
    page, the server opens no more than its pool of readers (a few descriptors, not hundreds),
    its memory grows by far less than the replies' total, and its descriptors come back down."""
    server = spawn("--db", str(tmp_path / "h.db"), "--max-connections-per-address", "0")
    process = psutil.Process(server.proc.pid)
    filler = RawClient(server.port)
    filler.send_json(type="join", room="big")
    filler.read_json()
    for n in range(200):
        filler.send_json(type="chat", room="big", text=f"{n:04d}" + "\u00e9" * 1996)
    for _ in range(200):
        filler.read_json()
    filler.close()
    fds_idle = process.num_fds()

    clients = [RawClient(server.port, timeout=60) for _ in range(CLIENTS)]
    for client in clients:
        client.send_json(type="join", room="big")
    for client in clients:
        next_of(client, "joined")
    fds_before, rss_before = process.num_fds(), process.memory_info().rss
    sampler = Sampler(process.pid)
    sampler.start()
    for client in clients:
        client.send_json(type="history", room="big", limit=200)
    for client in clients:
        assert next_of(client, "history")["messages"][-1]["seq"] == 200
    sampler.done.set()
    sampler.join()
    # replies total about 600 x 256 KiB = 150 MiB; the old code opened a connection per reader
    assert sampler.max_fds - fds_before <= 16, (fds_before, sampler.max_fds)
    assert sampler.max_rss - rss_before < 64 * MIB, (rss_before // MIB, sampler.max_rss // MIB)
    for client in clients:
        client.close()
    # SQLite keeps a closed connection's descriptor while the writer holds its lock on the file,
    # and reuses it for the next one: at most one per pooled reader stays
    wait_for(lambda: process.num_fds() <= fds_idle + POOL_SIZE, timeout=30)
