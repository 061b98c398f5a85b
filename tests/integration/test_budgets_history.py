"""Concurrent history reads on a real server (issue 10, item 4; issue 20: a bound that holds on
any machine): 600 clients asking at once get their pages while at most REPLY_BUILDERS replies
are built at once and the SQLite readers stay a fixed pool, so descriptors stay bounded and come
back down afterwards. What the bound is for, memory, depends on the machine's speed (how much
the clients have read meanwhile) and is measured by the bench and the soak, not asserted here."""

import contextlib
import resource
import threading

import psutil
import pytest

from chatserver.engines.sqlite import SqliteEngine
from chatserver.engines.sqlite_readers import POOL_SIZE, ReaderPool
from chatserver.rooms.registry import REPLY_BUILDERS
from tests.helpers import FAST_LIMITS, RawClient, wait_for

CLIENTS = 600


def next_of(client: RawClient, kind: str) -> dict:
    """The next event of type `kind` (presence events of the others joining come in between)."""
    while (event := client.read_json())["type"] != kind:
        pass
    return event


class CountingSqlite(SqliteEngine):
    """The SQLite engine, counting history reads in flight: the Registry reads inside one of its
    REPLY_BUILDERS slots, so reads at once are replies being built at once. While `gathering`, a
    read waits (1 s at most) until REPLY_BUILDERS are in flight, so the bound is reached on a
    machine of any speed and the test shows it holds, rather than that the machine was too slow
    to test it. Keeps the most reads in flight and the most pooled reader connections seen."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight = self.most_in_flight = self.most_connections = 0
        self.gathering = False
        self._counted = threading.Condition()

    def read(self, *args, **kwargs) -> list:
        with self._counted:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._counted.notify_all()
            if self.gathering:
                self._counted.wait_for(lambda: self.in_flight >= REPLY_BUILDERS, timeout=1)
        try:
            return super().read(*args, **kwargs)
        finally:
            with self._counted:
                self.in_flight -= 1
                self.most_connections = max(self.most_connections, self._readers.open_connections)


class FdSampler(threading.Thread):
    """Samples this process's open descriptors every 20 ms until stopped; keeps the maximum (a
    sample can only miss a peak, never invent one)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.most = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.most = max(self.most, self.process.num_fds())


@contextlib.contextmanager
def descriptors(at_least: int):
    """This process may open `at_least` descriptors (raised up to the hard limit) for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = soft if hard == resource.RLIM_INFINITY and soft >= at_least else min(max(soft, at_least), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_600_concurrent_history_reads_keep_builders_and_descriptors_bounded(make_server, tmp_path):
    """600 members asking for 200 events of history at the same moment: every one gets its
    page, at most REPLY_BUILDERS replies are built at once, the server opens no more than its
    pool of readers (a few descriptors, not hundreds), and its descriptors come back down."""
    with descriptors(4 * CLIENTS):
        engine = CountingSqlite(str(tmp_path / "h.db"))
        server = make_server(engine=engine, max_connections_per_address=0, **FAST_LIMITS)
        filler = RawClient(server.port)
        filler.send_json(type="join", room="big")
        filler.read_json()
        for n in range(200):
            filler.send_json(type="chat", room="big", text=f"{n:04d}" + "\u00e9" * 1996)
        for _ in range(200):
            filler.read_json()
        filler.close()
        process = psutil.Process()
        fds_idle = process.num_fds()

        clients = [RawClient(server.port, timeout=60) for _ in range(CLIENTS)]
        try:
            for client in clients:
                client.send_json(type="join", room="big")
            for client in clients:
                next_of(client, "joined")
            fds_before = process.num_fds()
            sampler = FdSampler()
            sampler.start()
            engine.gathering = True
            for client in clients:
                client.send_json(type="history", room="big", limit=200)
            for client in clients:
                assert next_of(client, "history")["messages"][-1]["seq"] == 200
            sampler.done.set()
            sampler.join()
        finally:
            for client in clients:
                client.close()
        # replies total about 600 x 256 KiB = 150 MiB; built REPLY_BUILDERS at a time
        assert engine.most_in_flight == REPLY_BUILDERS, engine.most_in_flight
        assert engine.most_connections <= POOL_SIZE, engine.most_connections  # the old code: one per reader
        assert sampler.most - fds_before <= 16, (fds_before, sampler.most)
        # SQLite keeps a closed connection's descriptor while the writer holds its lock on the
        # file, and reuses it for the next one: at most one per pooled reader stays
        wait_for(lambda: process.num_fds() <= fds_idle + POOL_SIZE, timeout=30)


def test_readers_all_busy_answer_join_history_and_search_unavailable_then_work(make_server, tmp_path):
    """Every SQLite history reader lent out for longer than the pool's wait: a join, a `history`
    and a `search` are each answered `unavailable` with their id (nothing hangs); once a reader is
    free again the same three are answered with the room's chat."""
    engine = SqliteEngine(str(tmp_path / "h.db"))
    server = make_server(engine=engine)
    engine._readers.close()
    engine._readers = ReaderPool(engine._connect_reader, size=1, wait=0.2)  # one reader: the test holds it
    ann, bob = RawClient(server.port), RawClient(server.port)
    try:
        ann.send_json(type="join", room="lobby")
        next_of(ann, "joined")
        ann.send_json(type="chat", room="lobby", text="kept in the file")
        next_of(ann, "chat")

        def asked(client, **request) -> dict:
            client.send_json(**request)
            while (event := client.read_json()).get("id") != request["id"]:
                pass
            return event

        requests = [(bob, {"type": "join", "room": "lobby", "id": 1}),
                    (ann, {"type": "history", "room": "lobby", "id": 2}),
                    (ann, {"type": "search", "room": "lobby", "q": "kept", "id": 3})]
        with engine._readers.connection():
            for client, request in requests:
                reply = asked(client, **request)
                assert (reply["type"], reply.get("code")) == ("error", "unavailable"), reply
        joined, history, search = (asked(client, **request) for client, request in requests)
        assert [m["text"] for m in joined["history"]] == ["kept in the file"]
        assert [m["text"] for m in history["messages"]] == ["kept in the file"]
        assert [m["text"] for m in search["messages"]] == ["kept in the file"]
    finally:
        ann.close()
        bob.close()
