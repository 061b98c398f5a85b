"""Read markers and DMs that wait, per identity, for one process: the memory and SQLite engines.

An identity is a token's folded nick (protocol.fold_nick). Each identity has:
- marks: {room: seq}, the last MAX_MARKS rooms it marked (a dict in the order they were marked,
  so its first key is the one marked longest ago, forgotten when a new room needs the place);
  a mark never goes back (`set_mark` keeps the max);
- DMs that wait: at most `most` events (the caller's `--offline-dms`), oldest first, until
  `take_dms` hands them out and forgets them in one step.

`LocalPersonal` keeps both in memory under `_personal_lock`; `_save_*` write a change through
before it is made (nothing in memory; the SQLite engine overrides them, engines/sqlite_personal.py,
and writes its `marks` and `dms` tables; Raises Unavailable, and then nothing changed).
Bounds: MAX_MARKS marks and `most` DMs per identity; identities are the token nicks the server
has seen, which the operator's tokens bound.
"""

import threading
import time

from chatserver.protocol import MAX_MARKS


class LocalPersonal:
    """engines.base.Engine's set_mark, marks, mark, keep_dm and take_dms in this process's memory
    (see the module docstring). Any thread; `_personal_lock` guards `_marks`, `_dms` and `_dm_n`."""

    def _init_personal(self, marks=(), dms=(), clock=time.time) -> None:
        """`marks`: rows (identity, room, seq) oldest first; `dms`: rows (identity, n, event)
        oldest first (n: a number rising over all DMs kept)."""
        self._personal_lock = threading.Lock()
        self._marks: dict[str, dict[str, int]] = {}  # identity -> {room: seq}, marked longest ago first
        self._dms: dict[str, list] = {}  # identity -> [(n, event)], oldest first
        self._dm_n = 0
        self._personal_clock = clock
        for identity, room, seq in marks:
            kept = self._marks.setdefault(identity, {})
            kept[room] = max(seq, kept.pop(room, 0))
            if len(kept) > MAX_MARKS:  # a file cut short between its two writes: trimmed here
                del kept[next(iter(kept))]
        for identity, n, event in dms:
            self._dms.setdefault(identity, []).append((n, event))
            self._dm_n = max(self._dm_n, n)

    # -- what the SQLite engine writes through (nothing to do in memory) ------------------------

    def _save_mark(self, identity: str, room: str, seq: int, at: float, forget: str | None) -> None:
        """Persist `identity`'s mark in `room` (marked at `at`), forgetting its mark in room
        `forget` (or None)."""

    def _save_dm(self, identity: str, n: int, event: dict) -> None:
        """Persist one DM kept for `identity`."""

    def _drop_dms(self, identity: str, upto: int) -> None:
        """Forget `identity`'s DMs numbered up to `upto`."""

    # -- engines.base.Engine --------------------------------------------------------------------

    def set_mark(self, identity: str, room: str, seq: int) -> int:
        with self._personal_lock:
            kept = self._marks.get(identity, {})
            seq = max(seq, kept.get(room, 0))
            forget = None
            if room not in kept and len(kept) >= MAX_MARKS:
                forget = next(iter(kept))
            self._save_mark(identity, room, seq, self._personal_clock(), forget)
            kept = self._marks.setdefault(identity, kept)
            kept.pop(room, None)  # to the end: marked last
            kept[room] = seq
            if forget is not None:
                del kept[forget]
            return seq

    def marks(self, identity: str) -> dict:
        with self._personal_lock:
            return dict(reversed(self._marks.get(identity, {}).items()))

    def mark(self, identity: str, room: str) -> int | None:
        with self._personal_lock:
            return self._marks.get(identity, {}).get(room)

    def keep_dm(self, identity: str, event: dict, most: int) -> bool:
        with self._personal_lock:
            waiting = self._dms.get(identity, [])
            if len(waiting) >= most:
                return False
            n = self._dm_n + 1
            self._save_dm(identity, n, event)
            self._dm_n = n
            self._dms.setdefault(identity, waiting).append((n, event))
            return True

    def take_dms(self, identity: str) -> list:
        with self._personal_lock:
            waiting = self._dms.get(identity)
            if not waiting:
                return []
            self._drop_dms(identity, waiting[-1][0])
            del self._dms[identity]
            return [event for _n, event in waiting]

