"""Soak run: a long, mixed load against one roomchat process, checking every delivery.

    .venv/bin/python bench/soak.py                       # 1,000,000 deliveries (a few minutes)
    .venv/bin/python bench/soak.py --deliveries 50000    # a short one

What runs at once (one asyncio process, its own framing from wsframes.py):
- steady members: ROOMS rooms with MEMBERS members each, SENDERS of whom chat at RATE per second;
- churners: clients that join and leave rooms at random, and end their connection at random:
  a clean close, or an abrupt drop (TCP cut, no close frame); they come back and resume each
  room with `join` + `after` (paging on with `history` when the reply says truncated);
- a never-reading client, in every room, that reads nothing for seconds at a time (it is
  dropped with 1008 as too slow; it reads its close frame and comes back);
- a flooder, sending pings and chats as fast as it can (it is closed with 1008; it comes back).

Every chat event a well-behaved client (steady member or churner) receives is checked: per
connection and room, seqs rise by exactly 1 from its `joined` on, across resumes. `lost` counts
skipped seqs, `reordered` seqs at or below one already seen; every chat a sender sent must come
back acknowledged. The load runs in two rounds, a fifth of the deliveries and then the rest,
every client gone between them; the server's RSS, threads and open descriptors are sampled
before, between the rounds (the warm baseline) and after. Prints one JSON object; exits 1 if
anything was lost.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil
from common import find_port, raise_nofile_limit
from wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    check_handshake,
    encode_frame,
    frame_bounds,
    handshake_request,
    new_mask,
)

ROOT = Path(__file__).resolve().parent.parent
ROOMS, MEMBERS, SENDERS, RATE, CHURNERS = 8, 25, 3, 20.0, 40
PADDING = "x" * 200  # in every chat text: the never-reading client's queue fills in seconds
SERVER_OPTIONS = ["--rate-burst", "100", "--rate-per-second", "50", "--address-rate-factor", "1000",
                  "--max-connections-per-address", "0", "--log-level", "WARNING"]


class Closed(Exception):
    """The server closed the connection (`code` from its close frame, or None)."""

    def __init__(self, code=None):
        super().__init__(code)
        self.code = code


class Conn:
    """One WebSocket client connection on asyncio streams; answers pings as it reads."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.mask = new_mask()
        self.buf = b""
        self.pos = 0

    @classmethod
    async def open(cls, port: int, rcvbuf: int = 0) -> "Conn":
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**22)
        conn = cls(reader, writer)
        request, accept = handshake_request("127.0.0.1", port)
        writer.write(request)
        check_handshake((await reader.readuntil(b"\r\n\r\n"))[:-4], accept)
        welcome = await conn.recv()
        assert welcome["type"] == "welcome", welcome
        return conn

    def send(self, **msg) -> None:
        self.writer.write(encode_frame(OP_TEXT, orjson.dumps(msg), self.mask))

    async def recv(self) -> dict:
        """The next JSON event. Raises Closed."""
        while True:
            start, end = frame_bounds(self.buf, self.pos, len(self.buf))
            if start >= 0:
                opcode = self.buf[self.pos] & 0x0F
                payload = self.buf[start:end]
                self.pos = end
                if opcode == OP_TEXT:
                    return orjson.loads(payload)
                if opcode == OP_PING:
                    self.writer.write(encode_frame(OP_PONG, payload, self.mask))
                elif opcode == OP_CLOSE:
                    raise Closed(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None)
                continue
            self.buf, self.pos = self.buf[self.pos:], 0
            try:
                chunk = await self.reader.read(262144)
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                raise Closed()
            self.buf += chunk

    def abort(self) -> None:
        """Cut the TCP connection (RST), no close frame."""
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()

    async def close(self) -> None:
        """Close handshake (RFC 6455 5.5.1), then the socket."""
        with contextlib.suppress(Exception):
            self.writer.write(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"), self.mask))
            with contextlib.suppress(Closed):
                while True:
                    await asyncio.wait_for(self.recv(), 5)
        self.writer.close()


class Stats:
    def __init__(self):
        self.deliveries = self.lost = self.reordered = self.sent = self.acked = 0
        self.resumes = self.truncated_resumes = self.drops = self.clean_closes = self.leaves = 0
        self.slow_closed = self.flood_closed = self.errors = 0
        self.error_codes: dict[str, int] = {}


class Checker:
    """Per room: the last seq this client saw; checks each new one, across resumes."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.last: dict[str, int | None] = {}
        self.paging: dict[str, list] = {}  # room -> live events held while a truncated resume pages on

    def history(self, room: str, events: list) -> None:
        for event in events:
            self.seq(room, event["seq"], live=False)

    def seq(self, room: str, seq: int, live: bool = True) -> None:
        last = self.last.get(room)
        if live:
            self.stats.deliveries += 1
        if last is None or seq == last + 1:
            self.last[room] = seq
        elif seq <= last:
            if live:  # a page of history may repeat what came live; a live repeat is wrong
                self.stats.reordered += 1
        else:
            self.stats.lost += seq - last - 1
            self.last[room] = seq


async def well_behaved(port: int, stats: Stats, checker: Checker, rooms: list, send_to: str | None,
                       stop: asyncio.Event, life: float | None) -> str:
    """One connection's life: join (or resume) `rooms`, read and check, chat to `send_to`; until
    `stop`, or for `life` seconds, then end it at random. Returns how it ended."""
    conn = await Conn.open(port)
    pending: dict[int, float] = {}
    for room in rooms:
        after = checker.last.get(room)
        conn.send(type="join", room=room, **({} if after is None else {"after": after}))
        if after is not None:
            stats.resumes += 1
    left: set = set()
    ends_at = None if life is None else time.monotonic() + life
    next_chat = time.monotonic()
    counter = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if ends_at is not None and now >= ends_at:
                break
            if send_to and now >= next_chat:
                counter += 1
                conn.send(type="chat", room=send_to, text=f"m{counter} {PADDING}", id=counter)
                pending[counter] = now
                stats.sent += 1
                next_chat += 1 / RATE
            if ends_at is not None and rooms and random.random() < 0.002:
                room = random.choice(rooms)
                if room not in left:
                    conn.send(type="leave", room=room)
                    left.add(room)
            try:
                event = await asyncio.wait_for(conn.recv(), 0.05)
            except TimeoutError:
                continue
            kind = event["type"]
            if kind == "chat":
                if event.get("id") in pending and event["from"]:
                    del pending[event["id"]]
                    stats.acked += 1
                room = event["room"]
                if room in checker.paging:
                    checker.paging[room].append(event["seq"])
                else:
                    checker.seq(room, event["seq"])
            elif kind == "joined":
                room = event["room"]
                checker.history(room, event["history"])
                if event.get("truncated") and checker.last.get(room) is not None:
                    stats.truncated_resumes += 1
                    checker.paging[room] = []
                    conn.send(type="history", room=room, after=checker.last[room], limit=200)
            elif kind == "history":
                room = event["room"]
                checker.history(room, event["messages"])
                if event["messages"]:
                    conn.send(type="history", room=room, after=checker.last[room], limit=200)
                else:
                    for seq in checker.paging.pop(room, []):
                        checker.seq(room, seq)
            elif kind == "left":
                checker.last.pop(event["room"], None)  # a later join starts afresh
                stats.leaves += 1
            elif kind == "error":
                stats.errors += 1
                stats.error_codes[event["code"]] = stats.error_codes.get(event["code"], 0) + 1
    except Closed as exc:
        return f"closed by server ({exc.code})"
    if stop.is_set() or random.random() < 0.5:
        # wait for the acknowledgements of what was sent, then close cleanly
        with contextlib.suppress(Closed, TimeoutError):
            deadline = time.monotonic() + 5
            while pending and time.monotonic() < deadline:
                event = await asyncio.wait_for(conn.recv(), 5)
                if event["type"] == "chat":
                    if event.get("id") in pending:
                        del pending[event["id"]]
                        stats.acked += 1
                    if event["room"] in checker.last:
                        checker.seq(event["room"], event["seq"])
        await conn.close()
        stats.clean_closes += 1
        return "clean"
    conn.abort()  # unacknowledged chats may or may not have been stored: not counted as sent
    stats.sent -= len(pending)
    stats.drops += 1
    return "dropped"


async def churner(port: int, stats: Stats, names: list, stop: asyncio.Event) -> None:
    checker = Checker(stats)
    while not stop.is_set():
        rooms = random.sample(names, random.randint(1, 3))
        for room in [r for r in checker.last if r not in rooms]:
            checker.last.pop(room)  # not resuming it: a later join starts afresh
        await well_behaved(port, stats, checker, rooms, None, stop, random.uniform(0.2, 2.0))
        await asyncio.sleep(random.uniform(0, 0.3))


async def never_reader(port: int, stats: Stats, names: list, stop: asyncio.Event) -> None:
    """A plain socket (asyncio's streams would keep reading it into memory), read only after its
    pause: the room events queued for it grow until it is dropped."""
    loop = asyncio.get_running_loop()
    mask = new_mask()
    while not stop.is_set():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request, _accept = handshake_request("127.0.0.1", port)
        await loop.sock_sendall(sock, request + b"".join(
            encode_frame(OP_TEXT, orjson.dumps({"type": "join", "room": room}), mask) for room in names))
        await asyncio.sleep(10)
        buf, pos, code = b"", 0, None
        with contextlib.suppress(TimeoutError, OSError):
            buf = (await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)).partition(b"\r\n\r\n")[2]
            while code is None:
                start, end = frame_bounds(buf, pos, len(buf))
                if start >= 0:
                    if buf[pos] & 0x0F == OP_CLOSE:
                        code = int.from_bytes(buf[start:start + 2], "big")
                    pos = end
                    continue
                buf, pos = buf[pos:], 0
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 262144), 10)
                if not chunk:
                    break
                buf += chunk
        if code == 1008:
            stats.slow_closed += 1
        sock.close()


async def flooder(port: int, stats: Stats, names: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        conn = await Conn.open(port)
        mask = conn.mask
        burst = (encode_frame(OP_PING, b"flood", mask) + encode_frame(OP_TEXT, b'{"type":"ping"}', mask)) * 2000
        conn.writer.write(burst)
        try:
            while True:
                await asyncio.wait_for(conn.recv(), 10)
        except Closed as exc:
            if exc.code == 1008:
                stats.flood_closed += 1
        except TimeoutError:
            pass
        conn.abort()
        await asyncio.sleep(1)


def sample(proc: psutil.Process) -> dict:
    return {"rss_mib": round(proc.memory_info().rss / 2**20, 1), "threads": proc.num_threads(), "fds": proc.num_fds()}


async def run(port: int, server: psutil.Process, target: int, stats: Stats) -> dict:
    """One round: every client starts, runs until `stats.deliveries` reaches `target`, and stops."""
    stop = asyncio.Event()
    names = [f"soak-{n}" for n in range(ROOMS)]
    tasks = []
    for n, room in enumerate(names):
        for m in range(MEMBERS):
            sends = room if m < SENDERS else None
            tasks.append(asyncio.create_task(well_behaved(port, stats, Checker(stats), [room], sends, stop, None)))
        if n % 2 == 0:
            await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(churner(port, stats, names, stop)) for _ in range(CHURNERS)]
    tasks += [asyncio.create_task(never_reader(port, stats, names, stop)),
              asyncio.create_task(flooder(port, stats, names, stop))]
    started = time.monotonic()
    peak = sample(server)
    while stats.deliveries < target:
        await asyncio.sleep(1)
        now = sample(server)
        peak = {k: max(peak[k], now[k]) for k in peak}
        print(f"# {time.monotonic() - started:6.0f} s  deliveries {stats.deliveries:>9,}  lost {stats.lost}  "
              f"reordered {stats.reordered}  drops {stats.drops}  slow-closed {stats.slow_closed}  "
              f"flood-closed {stats.flood_closed}  server {now}", file=sys.stderr, flush=True)
        if any(t.done() and t.exception() for t in tasks):
            raise next(t.exception() for t in tasks if t.done() and t.exception())
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    for task in tasks:
        task.cancel()
    return {"seconds": round(elapsed, 1), "peak": peak}


def settled(server: psutil.Process, threads: int) -> dict:
    """The server's figures once its connection threads are gone and idle history readers closed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.num_threads() > threads:
        time.sleep(0.5)
    time.sleep(12)  # history readers close after 10 s idle
    return sample(server)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, str(ROOT / "roomchat.py"), "--port", "0", "--db", os.path.join(workdir, "soak.db"),
                   *SERVER_OPTIONS]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        port = None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("roomchat exited before listening")
            port = find_port(line.encode())
        server = psutil.Process(proc.pid)
        time.sleep(2)
        stats = Stats()
        before = sample(server)
        warm = asyncio.run(run(port, server, args.deliveries // 5, stats))
        between = settled(server, before["threads"])
        main_round = asyncio.run(run(port, server, args.deliveries, stats))
        after = settled(server, before["threads"])
        proc.terminate()
        proc.wait(10)
    result = {"command": " ".join(["bench/soak.py", *(argv or sys.argv[1:])]), "server": command[1:],
              "before": before, "after_first_fifth": between, "after": after,
              "seconds": warm["seconds"] + main_round["seconds"],
              "peak": {k: max(warm["peak"][k], main_round["peak"][k]) for k in before}, **vars(stats)}
    print(json.dumps(result, indent=1))
    return 0 if result["lost"] == 0 and result["reordered"] == 0 and result["sent"] == result["acked"] else 1


if __name__ == "__main__":
    sys.exit(main())
