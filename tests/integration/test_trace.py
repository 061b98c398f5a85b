"""`python roomchat.py --trace`: a short session narrated step by step, in order; silent when off."""

import json
import re

from tests.helpers import Peer

PREFIX = re.compile(r"^\S+ \S+ INFO roomchat\.trace: ", re.M)


def trace_lines(stderr: str) -> list[str]:
    """The trace's lines without time, level and logger."""
    return [PREFIX.sub("", line) for line in stderr.splitlines() if " roomchat.trace: " in line]


def session(url: str) -> tuple[str, str]:
    """ann and bob join lobby, ann says hi, bob pings; returns the texts of ann's chat and bob's ping."""
    ann, bob = Peer(url), Peer(url)
    ann.set_nick("ann")
    bob.set_nick("bob")
    ann.join("lobby")
    bob.join("lobby")
    assert ann.recv_type("presence")["nick"] == "bob"
    chat = {"type": "chat", "room": "lobby", "text": "hi bob", "id": 1}
    ann.send(**chat)
    assert ann.recv_type("chat")["seq"] == bob.recv_type("chat")["seq"] == 1
    assert bob.request(type="ping") == {"type": "pong"}
    ann.close()
    bob.close()
    return json.dumps(chat), json.dumps({"type": "ping"})


def test_trace_narrates_each_step_of_a_session_in_order(spawn):
    """Under --trace a chat is told as frame (FIN, opcode, MASK, length), JSON, handler, the
    registry's decision (seq, members reached) and the fan-out (members, bytes, writes), in that
    order; joins and a ping are told too."""
    server = spawn("--trace", "--db", ":memory:")
    chat, ping = session(server.url)
    assert server.stop() == 0
    lines = trace_lines(server.stderr_text())
    chat_at = lines.index(f"json     ann: {chat}")
    assert lines[chat_at - 1] == f"frame    ann: FIN=1 opcode=0x1 (text) MASK=1 payload {len(chat)} bytes"
    assert lines[chat_at + 1] == ("handler  ann: chat -> handlers.chat.handle_many "
                                  "(batched with same-type messages that arrived together)")
    assert lines[chat_at + 2] == "registry lobby: seq 1 assigned to ann's chat; reaches 2 members"
    # two frames: ann's own copy carries her id, so the bytes are counted from the events themselves
    size = re.fullmatch(r"fan-out  2 members, 2 frames, (\d+) bytes in 2 writes \(one send per member\)",
                        lines[chat_at + 3])
    assert size and int(size[1]) > 2 * len(chat)
    assert "reply    ann: joined lobby: 1 member, 0 history events, " in " ".join(lines)
    assert "registry lobby: presence join of bob; reaches 1 member" in lines
    ping_at = lines.index(f"json     bob: {ping}")
    assert lines[ping_at - 1 : ping_at + 3] == [
        f"frame    bob: FIN=1 opcode=0x1 (text) MASK=1 payload {len(ping)} bytes",
        f"json     bob: {ping}", "handler  bob: ping -> handlers.ping.handle", "reply    bob: pong, 17 bytes"]
    assert "frame    ann: FIN=1 opcode=0x8 (close) MASK=1 payload 2 bytes" in lines


def test_no_trace_without_the_option(spawn):
    """Without --trace (the default) not one trace line is written."""
    server = spawn("--log-level", "DEBUG", "--db", ":memory:")
    session(server.url)
    assert server.stop() == 0
    assert trace_lines(server.stderr_text()) == []
