"""Storage stays bounded on a real server (issue 20): a flood of chats from many addresses, each
client within its rates, keeps the SQLite file and its WAL within a few MB of
--history-max-bytes, measured after every commit and checkpoint (so by bytes written, not by
time); and `--db :memory:` keeps to the same quotas."""

import json
import struct
import threading
import time

import pytest

from chatserver.engines.sqlite_quotas import HistoryQuotas
from tests.helpers import MeasuredSqlite, RawClient

MIB = 2**20
TEXT = "\U0001f600" * 2000  # the longest text a chat may have: 8000 bytes of UTF-8
PACE = 0.2  # seconds a client waits after each acknowledged chat: under the 5 per second allowed


def text_frame(payload: bytes) -> bytes:
    """A masked client text frame whose mask is zero, so one frame can be sent many times."""
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + b"\0\0\0\0" + payload


class FloodClient(threading.Thread):
    """One client from `source` (127.0.0.N): joins `room`, then sends `count` chats, each once
    the last was acknowledged and PACE seconds later, so it stays within its rates."""

    def __init__(self, port: int, source: str, room: str, count: int):
        super().__init__(daemon=True)
        self.client = RawClient(port, timeout=60, source=source)
        self.room, self.count = room, count
        self.acked, self.errors = 0, []

    def request(self, **msg) -> dict:
        """Send `msg` (a zero mask: no per-byte masking in Python); its reply (other events skipped)."""
        self.client.send(text_frame(json.dumps(msg).encode()))
        while (event := self.client.read_json()).get("id") != msg["id"]:
            pass
        return event

    def run(self) -> None:
        try:
            self.request(type="join", room=self.room, id=0)
            for n in range(1, self.count + 1):
                if (reply := self.request(type="chat", room=self.room, text=TEXT, id=n))["type"] == "chat":
                    self.acked += 1
                else:
                    self.errors.append(reply)
                time.sleep(PACE)
        except Exception as exc:  # the test reports it
            self.errors.append(repr(exc))
        finally:
            self.client.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flood_from_many_addresses_keeps_file_and_wal_within_the_quota(make_server, tmp_path):
    """100 clients from 25 addresses, each within its rates, write 40 MB of the longest texts
    against an 8 MiB quota: every chat is stored, and file + WAL never pass the quota by more
    than 3 MiB, nor the WAL its share by more than 2 MiB (the old engine's WAL grew to 344 MB)."""
    quota = 8 * MIB
    quotas = HistoryQuotas(max_bytes=quota)
    engine = MeasuredSqlite(str(tmp_path / "h.db"), quotas=quotas)
    server = make_server(engine=engine)
    clients = [FloodClient(server.port, f"127.0.0.{2 + n % 25}", f"room-{n}", 50) for n in range(100)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(240)
    errors = [error for client in clients for error in client.errors]
    assert not errors, errors[:3]
    written = sum(client.acked for client in clients) * len(TEXT.encode())
    assert written == 100 * 50 * 8000  # 40 MB, five times the quota
    assert engine.peak_wal <= quotas.wal_max + 2 * MIB, (engine.peak_wal, quotas.wal_max)
    assert engine.peak_total <= quota + 3 * MIB, engine.peak_total
    print(f"flood: {written / MIB:.0f} MiB written, {engine.commits_measured} commits; peaks: file + WAL "
          f"{engine.peak_total / MIB:.2f} MiB (quota {quota / MIB:.0f} MiB), WAL {engine.peak_wal / MIB:.2f} MiB "
          f"(its share {quotas.wal_max / MIB:.2f} MiB)")
