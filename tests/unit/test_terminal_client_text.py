"""The terminal client's text handling, without sockets: command parsing and name rules, rendering
(every field made safe), the shapes of server events, pacing, backoff and addresses."""

import pytest

from chatclient import render
from chatclient.commands import Command, UsageError, parse
from chatclient.events import problem
from chatclient.options import default_url, normalize_url, parse_args, with_resume
from chatclient.pacer import Pacer
from chatclient.terminal import backoff


def chat(seq, text="hi", room="lobby", sender="bob", **extra):
    return {"type": "chat", "room": room, "from": sender, "text": text, "seq": seq, "ts": 0.0, **extra}


# -- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there", Command("say", ("hello there",))),
        ("//shrug", Command("say", ("/shrug",))),
        ("/join dev", Command("join", ("dev",))),
        ("/JOIN dev", Command("join", ("dev",))),
        ("/leave", Command("leave", ())),
        ("/leave dev", Command("leave", ("dev",))),
        ("/nick ann", Command("nick", ("ann",))),
        ("/msg bob  hello   world", Command("msg", ("bob", "hello   world"))),
        ("/who", Command("who", ())),
        ("/rooms", Command("rooms", ())),
        ("/history", Command("history", (20,))),
        ("/history 200", Command("history", (200,))),
        ("/quit", Command("quit", ())),
        ("/help", Command("help", ())),
        ("   ", None),
    ],
)
def test_parse_turns_lines_into_commands(line, command):
    """Plain lines are chat, // escapes a leading slash, and every command takes its arguments."""
    assert parse(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/join", "Usage: /join ROOM"),
        ("/join a b", "'a b' is not a valid room name"),
        ("/msg bob", "Usage: /msg NICK TEXT"),
        ("/nick", "Usage: /nick NICK"),
        ("/rooms all", "Usage: /rooms"),
        ("/history 0", "N is from 1 to 200"),
        ("/history 201", "N is from 1 to 200"),
        ("/history ten", "N is from 1 to 200"),
        ("/dance", "Unknown command /dance"),
        ("/join bad room!", "'bad room!' is not a valid room name: .* may not contain a space or '!'"),
        ("/join " + "r" * 65, "it has 65 characters"),
        ("/who caf\u00e9", "may not contain '\u00e9'"),
        ("/nick ann smith", "'ann smith' is not a valid nick: a nick is 1-32 letters"),
        ("/msg b@b hi", "may not contain '@'"),
    ],
)
def test_parse_explains_bad_lines(line, message):
    """A line that is not a valid command raises UsageError saying how to write it."""
    with pytest.raises(UsageError, match=message):
        parse(line)


# -- rendering ---------------------------------------------------------------------------------


def test_chat_line_has_time_room_sender_and_text():
    """A chat event prints as HH:MM:SS [room] #SEQ <sender> text (the seq names it for /edit, /react)."""
    line = render.chat(chat(1, "hello", ts=1_700_000_000.0))
    assert line.endswith(" [lobby] #1 <bob> hello")
    assert len(line.split(" ", 1)[0]) == len("12:34:56")


def test_control_characters_are_escaped_and_newlines_indented():
    """Escape sequences become visible text; in text a second line is indented, elsewhere it is \\n."""
    assert render.safe("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert render.safe("one\ntwo", multiline=True) == "one\n    two"
    assert render.safe("one\ntwo") == "one\\ntwo"


@pytest.mark.parametrize("code", [*range(0x20), *range(0x7F, 0xA0), 0x061C, *range(0x200B, 0x2010), 0x2028, 0x2029,
                                  *range(0x202A, 0x202F), 0x2060, *range(0x2066, 0x206A), 0xFEFF, 0xD800, 0xDFFF])
def test_invisible_and_reordering_characters_are_made_visible(code):
    """C0/C1 controls, bidi controls, zero-width characters and lone surrogates print as escapes."""
    shown = render.safe(f"a{chr(code)}b")
    assert shown.isprintable() and shown.isascii() and shown[0] == "a" and shown[-1] == "b" and len(shown) > 3


def test_ordinary_text_is_left_alone():
    """Letters of any script, emoji and tabs-free punctuation print as they are."""
    for text in ("caf\u00e9", "\u05e9\u05dc\u05d5\u05dd", "\u4f60\u597d", "\U0001f600", "a-b.c#d"):
        assert render.safe(text) == text


def test_history_grammar():
    """One message is "1 message", not "1 messages"."""
    assert render.history("lobby", 1).endswith("last 1 message in lobby")
    assert render.history("lobby", 2).endswith("last 2 messages in lobby")
    assert render.history("lobby", 0).endswith("no messages yet in lobby")


@pytest.mark.parametrize(
    ("event", "said"),
    [
        ({"type": "chat", "room": "r", "from": "a", "text": "t", "seq": 1, "ts": 1.5}, None),
        ({"type": "chat", "room": "r", "from": "a", "text": "t", "seq": True}, "'seq' is not an integer"),
        ({"type": "chat", "room": "r", "from": "a", "text": "t", "seq": 1, "ts": "now"}, "'ts' is not a number"),
        ({"type": "joined", "room": "r", "members": ["a"], "history": [], "truncated": 1}, "not true or false"),
        ({"type": "history", "room": "r", "messages": [3]}, "an item in its 'messages' that is not an object"),
        ({"type": "pong", "extra": "ignored"}, None),
        ({"type": "error", "code": "x", "id": None}, "'id' is not an integer or a string"),
        ("text", "a message that is not a JSON object"),
    ],
)
def test_event_shapes_are_checked(event, said):
    """problem() accepts PROTOCOL.md's shapes (unknown keys too) and names what is wrong otherwise."""
    found = problem(event)
    assert found is None if said is None else said in found


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "ws://127.0.0.1:8765/"),
        ({"ROOMCHAT_PORT": "9000"}, "ws://127.0.0.1:9000/"),
        ({"ROOMCHAT_HOST": "0.0.0.0", "ROOMCHAT_PORT": "9000"}, "ws://127.0.0.1:9000/"),
        ({"ROOMCHAT_HOST": "::"}, "ws://[::1]:8765/"),
        ({"ROOMCHAT_HOST": "chat.example"}, "ws://chat.example:8765/"),
        ({"ROOMCHAT_CERTFILE": "/etc/cert.pem"}, "wss://127.0.0.1:8765/"),
    ],
)
def test_default_url_follows_the_servers_variables(env, url):
    """The default address is where a server with the same ROOMCHAT_HOST/ROOMCHAT_PORT (and
    ROOMCHAT_CERTFILE: wss) listens."""
    assert default_url(env) == url


def test_other_events_render_in_words():
    """dm, presence, nick, who and rooms events each read as a sentence."""
    assert render.dm({"from": "ann", "to": "bob", "text": "psst", "ts": 0}).endswith("[dm] <ann> -> bob: psst")
    assert render.presence({"room": "dev", "event": "leave", "nick": "bob"}).endswith("[dev] * bob left")
    assert render.renamed({"old": "ann", "nick": "annie"}).endswith("* ann is now known as annie")
    assert render.members("dev", ["ann"]).endswith("* dev: 1 member: ann")
    assert render.members("dev", [], joined=True).endswith("* you joined dev: 0 members: nobody")
    assert render.rooms([{"room": "a", "members": 2}]).endswith("* rooms: a (2)")
    assert render.rooms([]).endswith("no rooms have members yet")


# -- pacing, backoff, addresses ----------------------------------------------------------------


def test_pacer_stays_under_the_servers_bucket():
    """The pacer allows burst-1 at once, then refills a little slower than the server."""
    now = [0.0]
    pacer = Pacer.for_limits({"rate_burst": 5, "rate_per_second": 10.0}, clock=lambda: now[0])
    for _ in range(4):
        assert pacer.delay() == 0
        pacer.take()
    assert pacer.delay() == pytest.approx(1 / 9)
    now[0] += 1 / 9
    assert pacer.delay() == 0


def test_backoff_grows_with_jitter_and_is_capped():
    """Each retry waits longer, by a random amount within half of the step, up to 15 s."""
    for attempt in range(12):
        step = min(15.0, 0.5 * 2**attempt)
        assert step / 2 <= backoff(attempt) <= step
    assert len({backoff(3) for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("ws://h:1/", "ws://h:1/"),
        ("ws://h:1", "ws://h:1/"),
        ("http://h:1/", "ws://h:1/"),
        ("https://h/", "wss://h/"),
        ("h:8765", "ws://h:8765/"),
    ],
)
def test_normalize_url(given, url):
    """ws, wss, http(s) addresses and bare HOST:PORT all become WebSocket URLs."""
    assert normalize_url(given) == url


@pytest.mark.parametrize(
    ("url", "token", "result"),
    [
        ("ws://h:1/", None, "ws://h:1/"),
        ("ws://h:1/", "a-b_c", "ws://h:1/?resume=a-b_c"),
        ("wss://h/?token=x.y.z", "r1", "wss://h/?token=x.y.z&resume=r1"),
        ("ws://h/?resume=old&token=t", "new", "ws://h/?token=t&resume=new"),
    ],
)
def test_the_resume_token_joins_the_query(url, token, result):
    """The newest resume token goes in the query, replacing an older one; `token=` stays."""
    assert with_resume(url, token) == result


def test_ping_and_tls_options(tmp_path, capsys, tls_files):
    """--ping-interval/--ping-timeout default to 15 s and 5 s and take positive seconds; --cafile
    (or ROOMCHAT_CAFILE) must be a PEM file and becomes a TLS context that trusts it."""
    args = parse_args([], env={})
    assert (args.ping_interval, args.ping_timeout, args.cafile, args.sslopt) == (15.0, 5.0, None, {})
    assert parse_args(["--ping-interval", "0.5", "--ping-timeout", "2"], env={}).ping_interval == 0.5
    for bad in (["--ping-timeout", "0"], ["--ping-interval", "soon"], ["--cafile", str(tmp_path / "none.pem")]):
        with pytest.raises(SystemExit):
            parse_args(bad, env={})
    assert "not a readable PEM file" in capsys.readouterr().err
    context = parse_args([], env={"ROOMCHAT_CAFILE": tls_files.ca}).sslopt["context"]
    assert context.check_hostname and context.get_ca_certs()


def test_a_refused_handshake_is_one_readable_line():
    """A handshake refused with a status (401 under --require-token) is told as the status and the
    server's one-line reason, not websocket-client's dump of every header."""
    import websocket

    from chatclient.terminal import describe

    refused = websocket.WebSocketBadStatusException(
        "Handshake status %d %s -+-+- %s -+-+- %s", 401, "Unauthorized", {"content-length": "52"},
        b"This server requires a token: connect with ?token=\n")
    said = "the server refused the connection (401 Unauthorized): This server requires a token: connect with ?token="
    assert describe(refused) == said


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/topic", Command("topic", ())),
        ("/topic Exam on Friday at 10", Command("topic", ("Exam on Friday at 10",))),
        ("/topic -", Command("topic", ("",))),
        ("/kick bob", Command("kick", ("bob",))),
        ("/kick bob  being rude", Command("kick", ("bob", "being rude"))),
        ("/ban bob 10m spam, again", Command("ban", ("bob", 600, "spam, again"))),
        ("/ban bob 0", Command("ban", ("bob", 0))),
        ("/mute bob 90", Command("mute", ("bob", 90))),
        ("/mute bob 2h", Command("mute", ("bob", 7200))),
        ("/mute bob 1D", Command("mute", ("bob", 86400))),
        ("/mode", Command("mode", ())),
        ("/mode moderated", Command("mode", (("moderated", True),))),
        ("/mode open slow 30s", Command("mode", (("moderated", False), ("slow", 30)))),
        ("/mode slow off", Command("mode", (("slow", 0),))),
    ],
)
def test_parse_turns_moderation_lines_into_commands(line, command):
    """/topic, /kick, /ban, /mute and /mode take their nick, time (with a unit) and reason."""
    assert parse(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/kick", "Usage: /kick NICK"),
        ("/kick b@b", "not a valid nick"),
        ("/ban bob", "Usage: /ban NICK TIME"),
        ("/ban bob soon", "TIME is a whole number of seconds, or with a unit"),
        ("/mute bob 31d", "TIME is at most 2592000 seconds"),
        ("/mute bob -5", "TIME is a whole number"),
        ("/mode slow", "Usage: /mode"),
        ("/mode slow 2h", "TIME is at most 3600 seconds"),
        ("/mode quiet", "Usage: /mode"),
        ("/mode moderated open", "Usage: /mode"),
    ],
)
def test_parse_explains_bad_moderation_lines(line, message):
    """A moderation line that cannot be sent says how to write it (one line, nothing sent)."""
    with pytest.raises(UsageError, match=message):
        parse(line)


def test_mode_and_moderation_events_render_in_words():
    """A mode event names who set what; a mode reads as words."""
    mode = {"type": "mode", "room": "class", "by": "ann", "moderated": True, "slow": 30}
    assert render.moderation(mode).endswith("[class] * ann set the mode: moderated (only operators write), "
                                            "slow mode 30 s")
    assert render.mode_words({"moderated": False, "slow": 0}) == "open"
