"""One client's chat streams, room by room, cut into segments: what the fault suite's Recorder
(tests/faults/recorder.py) knows of the seqs it received. Pure: no I/O and no lock of its own
(the Recorder's lock guards it).

A segment is a continuous part of one room's stream in one epoch: it begins at a `joined` and
goes on through live chats and through a re-join with `after` equal to its last seq (a resume
after a 1012 in the same epoch). Within a segment seqs rise by exactly 1: a seq that skips is a
gap, a live seq at or below the last one is a repeat; a `joined.history` that replays seqs the
segment has already is fine if their content is the same.
"""

from dataclasses import dataclass, field


@dataclass
class Segment:
    """`chats` maps seq -> (from, text); `started` is the time.monotonic() of its `joined`."""

    epoch: str
    room: str
    started: float
    seqs: list = field(default_factory=list)
    chats: dict = field(default_factory=dict)
    open: bool = True

    @property
    def last(self) -> int | None:
        return self.seqs[-1] if self.seqs else None


class Streams:
    """Segments per room, and the problems seen (gaps, repeats, changed replays, strays)."""

    def __init__(self):
        self.segments: dict = {}  # room -> [Segment], oldest first
        self.problems: list = []

    def joined(self, room: str, epoch: str, history: list, after: int | None, now: float) -> None:
        """A `joined` for `room` (asked with `after`, or None): continue the last segment (a
        re-join with `after` at its end, or a join of a room it is in) or begin one."""
        segments = self.segments.setdefault(room, [])
        last = segments[-1] if segments else None
        if last is not None and last.epoch == epoch and (
                (after is not None and last.last == after) or (after is None and last.open)):
            segment = last
            segment.open = True
        else:
            segment = Segment(epoch, room, now)
            segments.append(segment)
        for chat in history:
            self._add(segment, chat, replay=True)

    def chat(self, room: str, chat: dict) -> None:
        """A live chat event of `room`."""
        segments = self.segments.get(room)
        if not segments or not segments[-1].open:
            self.problems.append(f"chat seq {chat.get('seq')} of {room} received while not in it: {chat}")
            return
        self._add(segments[-1], chat, replay=False)

    def end(self, room: str | None = None) -> None:
        """`room`'s stream (every room's, with None) stops here: left, removed or disconnected."""
        for name, segments in self.segments.items():
            if room is None or name == room:
                for segment in segments:
                    segment.open = False

    def last_seq(self, room: str, epoch: str) -> int | None:
        """The last seq received of `room` in `epoch` (what a re-join asks `after`), if any."""
        segment = next((s for s in reversed(self.segments.get(room, [])) if s.epoch == epoch), None)
        return segment.last if segment is not None else None

    def spanning(self, room: str, epoch: str, since: float) -> Segment | None:
        """The open segment of `room` in `epoch` that began before `since`, if any."""
        return next((s for s in reversed(self.segments.get(room, []))
                     if s.open and s.epoch == epoch and s.started < since), None)

    def _add(self, segment: Segment, chat: dict, replay: bool) -> None:
        seq, content = chat["seq"], (chat["from"], chat["text"])
        last = segment.last
        where = f"{segment.room} (epoch {segment.epoch})"
        if last is not None and seq <= last:
            if not replay:
                self.problems.append(f"{where}: seq {seq} received again after seq {last}")
            elif segment.chats.get(seq, content) != content:
                self.problems.append(f"{where}: seq {seq} replayed as {content}, first seen as {segment.chats[seq]}")
            return
        if last is not None and seq != last + 1:
            self.problems.append(f"{where}: gap, seq {seq} right after seq {last}")
        segment.seqs.append(seq)
        segment.chats[seq] = content
