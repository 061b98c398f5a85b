"""Budgets a client draws on: how many bytes one reply may carry, and the rate that the
connections of one address share. Pure, no sockets; the registry and the app use them.

Replies. A list in a reply (`joined.history`, `history.messages`, `rooms.rooms`, `who.members`)
is cut so that the whole frame stays within `max_reply_bytes`, and says so (`truncated`); the
client pages on (PROTOCOL.md). Each item is encoded once, measured, and the frame is put together
from the same bytes, so nothing is encoded twice. At least one item is always kept, so paging
moves on even when one event is larger than the budget.

Address shares. Every connection has its own token bucket (client.TokenBucket); connections from
one address (after trusted-proxy resolution) also draw from one shared bucket of
`address_rate_factor` times the burst and the rate, so many connections from one place cannot
add up to many times the rate (fan-in). The shared bucket lives while a connection of that
address does.
"""

import threading
import time
from collections import OrderedDict

import orjson

from chatserver.rooms.client import TokenBucket
from chatserver.wire import frames

FRAME_OVERHEAD = 64  # bytes kept for the frame header, `truncated` and the brackets around the list


def bounded_frame(head: dict, key: str, items: list, max_bytes: int, newest: bool = False) -> tuple[bytes, int]:
    """A text frame of `head` with `key` set to as many of `items` as fit in `max_bytes` (at
    least one): the first ones, or with `newest` the last ones, in their order. When some are
    left out, `"truncated": true` is added. Returns (frame, number of items kept).

    `head` must be a non-empty JSON object without `key`; items are JSON values."""
    payload, kept = bounded_json(head, key, items, max_bytes, newest)
    return frames.text_frame(payload), kept


def bounded_json(head: dict, key: str, items: list, max_bytes: int, newest: bool = False) -> tuple[bytes, int]:
    """`bounded_frame`'s JSON object, without the frame (the HTTP API's answers)."""
    encoded = [orjson.dumps(item) for item in items]
    room = max_bytes - len(orjson.dumps(head)) - len(key) - FRAME_OVERHEAD
    kept = 0
    for data in reversed(encoded) if newest else encoded:
        room -= len(data) + 1
        if room < 0 and kept:
            break
        kept += 1
    chosen = encoded[len(encoded) - kept:] if newest else encoded[:kept]
    if kept < len(items):
        head = {**head, "truncated": True}
    return orjson.dumps(head)[:-1] + b',"' + key.encode() + b'":[' + b",".join(chosen) + b"]}", kept


class RateBook:
    """Token buckets (client.TokenBucket) by key, for requests that come without a connection (the
    HTTP API: one book per address, one per identity): `burst` at once, refilled at `rate` per
    second. At most `size` keys are kept, the least recently used dropped first (a dropped key
    starts full again, as it would after a pause). Any thread; `_lock` (a leaf) guards the table
    and the buckets in it."""

    def __init__(self, burst: int, rate: float, size: int = 100_000, clock=time.monotonic):
        self.burst = burst
        self.rate = rate
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict = OrderedDict()  # key -> TokenBucket, the most recently used last

    def take(self, key: str) -> float:
        """One token of `key`'s bucket: 0.0 when taken, else the seconds until one is back."""
        with self._lock:
            bucket = self._buckets.pop(key, None) or TokenBucket(self.burst, self.rate, self._clock)
            self._buckets[key] = bucket  # now the most recently used
            if len(self._buckets) > self._size:
                self._buckets.popitem(last=False)
            return 0.0 if bucket.take() else bucket.wait


class SharedTokenBucket(TokenBucket):
    """A TokenBucket that several connections' threads take from at once: under a lock."""

    def __init__(self, burst: int, rate: float, clock=time.monotonic):
        super().__init__(burst, rate, clock)
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            return super().take()


class AddressShares:
    """The shared bucket of each address with live connections. Any thread; `_lock` (a leaf)
    guards the table."""

    def __init__(self, burst: int, rate: float):
        self.burst = burst
        self.rate = rate
        self._lock = threading.Lock()
        self._shares: dict[str, list] = {}  # address -> [SharedTokenBucket, connections using it]

    def acquire(self, address: str) -> SharedTokenBucket:
        """The bucket of `address`, made on its first connection; `release` it when done."""
        with self._lock:
            entry = self._shares.get(address)
            if entry is None:
                entry = self._shares[address] = [SharedTokenBucket(self.burst, self.rate), 0]
            entry[1] += 1
            return entry[0]

    def release(self, address: str) -> None:
        """One connection of `address` is gone; its bucket goes with the last one."""
        with self._lock:
            entry = self._shares.get(address)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._shares[address]
