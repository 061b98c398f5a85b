"""The fault suite's stream bookkeeping (tests/faults/streams.py), fed events by hand: what counts
as a gap, a repeat or a continuation."""

from tests.faults.streams import Streams


def chats(*seqs, text="t") -> list:
    return [{"type": "chat", "room": "r", "from": "ann", "text": f"{text}{s}", "seq": s} for s in seqs]


def test_a_stream_that_rises_by_one_has_no_problem():
    """joined with history 1-3, then live 4 and 5: one segment, seqs 1-5, no problem."""
    streams = Streams()
    streams.joined("r", "e1", chats(1, 2, 3), None, now=1.0)
    for chat in chats(4, 5):
        streams.chat("r", chat)
    assert streams.problems == []
    assert streams.segments["r"][0].seqs == [1, 2, 3, 4, 5]


def test_a_skipped_seq_is_a_gap_and_a_live_repeat_is_a_problem():
    """Live 3 after 1 is a gap; live 3 again is a repeat."""
    streams = Streams()
    streams.joined("r", "e1", chats(1), None, now=1.0)
    for chat in chats(3, 3):
        streams.chat("r", chat)
    assert streams.problems == ["r (epoch e1): gap, seq 3 right after seq 1",
                                "r (epoch e1): seq 3 received again after seq 3"]


def test_a_rejoin_with_after_continues_the_segment_across_a_reconnect():
    """After a disconnect, a re-join with `after` = the last seq continues the same segment;
    overlapping history with the same content is fine, with other content it is a problem."""
    streams = Streams()
    streams.joined("r", "e1", chats(1, 2), None, now=1.0)
    streams.end()
    assert streams.last_seq("r", "e1") == 2
    streams.joined("r", "e1", chats(2, 3, 4), 2, now=5.0)
    assert [len(streams.segments["r"]), streams.segments["r"][0].seqs, streams.problems] == [1, [1, 2, 3, 4], []]
    assert streams.spanning("r", "e1", since=2.0) is streams.segments["r"][0]
    streams.joined("r", "e1", chats(4, text="other"), 4, now=6.0)
    assert streams.problems == ["r (epoch e1): seq 4 replayed as ('ann', 'other4'), first seen as ('ann', 't4')"]


def test_a_new_epoch_or_a_join_without_after_begins_a_new_segment():
    """A join in another epoch, or a join without `after` after leaving, starts over: no gap."""
    streams = Streams()
    streams.joined("r", "e1", chats(5, 6), None, now=1.0)
    streams.end("r")
    streams.joined("r", "e2", chats(1), None, now=2.0)
    streams.end("r")
    streams.joined("r", "e2", chats(9), None, now=3.0)
    assert [s.seqs for s in streams.segments["r"]] == [[5, 6], [1], [9]]
    assert streams.problems == []
    assert streams.spanning("r", "e1", since=9.0) is None  # that segment ended


def test_a_live_chat_of_a_room_it_left_is_a_problem():
    """Once its stream ended (left, kicked), a chat of that room is a stray."""
    streams = Streams()
    streams.joined("r", "e1", [], None, now=1.0)
    streams.end("r")
    streams.chat("r", chats(1)[0])
    assert len(streams.problems) == 1 and "received while not in it" in streams.problems[0]
