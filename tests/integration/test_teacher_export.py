"""Transcripts: `python roomchat.py export` over a real server's SQLite file (while it runs), in
md, jsonl and html, moderation events included in stream order, html escaped, `--since`; edited
and reacted-to chats as `history` gives them, the same from SQLite and Redis; the memory engine
keeps the same transcript; `history` and `joined` still carry chats only."""

import json
import re
import subprocess
import time

import pytest

from tests.helpers import ROOMCHAT, SECRET, members_in, roomchat_env, token, with_token

pytestmark = pytest.mark.timeout(30)

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


def lesson(server, peers) -> None:
    """A short lesson in `class`: chats around a topic, a mode, a mute and a kick, all seen by the teacher."""
    op = peers(with_token(server.url, token("teacher", op=True)))
    stud = peers(server.url)
    stud.set_nick("stud1")
    op.join("class")
    stud.join("class")
    stud.request(type="chat", room="class", text="hello\nsecond line")
    for request in ({"type": "topic", "topic": "Exam on Friday"}, {"type": "mode", "slow": 30},
                    {"type": "mute", "nick": "stud1", "duration": 60, "reason": "spam"}):
        op.send(room="class", id="m", **request)
        op.recv_type(request["type"])
    op.send(type="chat", room="class", text=HOSTILE)
    op.recv_type("chat")
    op.send(type="kick", room="class", nick="stud1")
    op.recv_type("kick")
    # history and joined are unchanged: chats only
    op.send(type="history", room="class")
    assert [e["type"] for e in op.recv_type("history")["messages"]] == ["chat", "chat"]
    assert [e["type"] for e in peers(server.url).join("class")["history"]] == ["chat", "chat"]


EXPECTED = ["chat", "topic", "mode", "mute", "chat", "kick"]


def export(db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ROOMCHAT, "export", "--room", "class", "--db", db, *args], env=roomchat_env(),
                          capture_output=True, text=True, timeout=10)


def test_export_of_a_running_servers_sqlite_file_in_three_formats(make_server, peers, tmp_path):
    """While the server runs: jsonl has every event as sent, in stream order (moderation included);
    md says each in words; html is one self-contained page with every text escaped."""
    db = str(tmp_path / "h.db")
    server = make_server(db=db, token_secret=SECRET)
    lesson(server, peers)
    done = export(db, "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["type"] for e in events] == EXPECTED
    assert events[0]["text"] == "hello\nsecond line" and events[3]["by"] == "teacher"
    assert all(isinstance(e["ts"], float) for e in events)
    md = export(db).stdout  # md is the default
    assert md.startswith("# Transcript of class\n")
    assert 'teacher set the topic to "Exam on Friday"' in md and "teacher muted stud1 for 1 minute: spam" in md
    assert "slow mode 30 seconds" in md and "teacher removed stud1 from the room" in md
    assert md.index("hello") < md.index("Exam on Friday") < md.index("removed stud1")
    assert "\\<script\\>" in md  # markdown-significant characters escaped
    page = export(db, "--format", "html").stdout
    assert page.startswith("<!doctype html>") and "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in page
    assert "src=" not in page.replace("src=x", "") and "href=" not in page and "http" not in page


def test_since_keeps_only_later_events(make_server, peers, tmp_path):
    """--since a day in the future gives no events; a day in the past gives them all; a bad date exits 2."""
    db = str(tmp_path / "h.db")
    lesson(make_server(db=db, token_secret=SECRET), peers)
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400 * 2))
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400 * 2))
    assert export(db, "--format", "jsonl", "--since", tomorrow).stdout == ""
    assert len(export(db, "--format", "jsonl", "--since", yesterday).stdout.splitlines()) == len(EXPECTED)
    bad = export(db, "--since", "last week")
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_export_refuses_what_it_cannot_read(tmp_path):
    """A missing file, a :memory: history and an unreachable Redis exit 2 with a one-line reason on stderr."""
    missing = export(str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no history database" in missing.stderr
    assert export(":memory:").returncode == 2
    redis = subprocess.run([*ROOMCHAT, "export", "--room", "class", "--redis", "redis://127.0.0.1:1/0"],
                           env=roomchat_env(), capture_output=True, text=True, timeout=10)
    assert redis.returncode == 2 and "Redis" in redis.stderr and len(redis.stderr.splitlines()) == 1


def test_export_from_redis_has_the_same_transcript(cluster, redis_server, peers):
    """With several processes on Redis, `export --redis` writes the same events in the same order
    as from a SQLite file: the lesson's chats and moderation events, placed among them."""
    a, _b = cluster(2, "--token-secret", SECRET)
    lesson(a, peers)
    done = subprocess.run([*ROOMCHAT, "export", "--room", "class", "--redis", redis_server.url, "--format", "jsonl"],
                          env=roomchat_env(), capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["type"] for e in events] == EXPECTED
    assert all(e["ts"] > 0 for e in events)


def test_the_memory_engine_keeps_the_same_transcript(make_server, peers):
    """The memory engine's transcript has the same events in the same order as SQLite's."""
    server = make_server(token_secret=SECRET)
    lesson(server, peers)
    assert [e["type"] for e in server.engine.transcript("class")] == EXPECTED
    assert server.engine.transcript("class", since=time.time() + 60) == []


def test_a_lesson_run_from_invite_links_then_exported(make_server, peers, tmp_path):
    """A teacher's op invite and a class invite: the teacher sets the topic, a moderated room, slow mode,
    mutes and kicks a student who sees each; the transcript afterwards has it all in order."""
    from chatserver.rooms.invites import issue_invite

    db = str(tmp_path / "h.db")
    server = make_server(db=db, token_secret=SECRET)
    teacher_link = issue_invite(SECRET.encode(), ["class"], 1, 3600, op=True)
    class_link = issue_invite(SECRET.encode(), ["class"], 30, 3600)
    teacher = peers(f"{server.url}?invite={teacher_link}")
    teacher.send(type="nick", nick="teacher", id=1)
    assert teacher.recv_type("auth")["op"] is True
    teacher.join("class")
    student = peers(f"{server.url}?invite={class_link}")
    student.send(type="nick", nick="stud1", id=1)
    student.recv_type("auth")
    student.join("class")
    for request in ({"type": "topic", "topic": "Exam on Friday at 10"}, {"type": "mode", "moderated": True},
                    {"type": "mode", "moderated": False, "slow": 60}):
        teacher.send(room="class", **request)
        assert student.recv_type(request["type"])["by"] == "teacher"
    student.send(type="chat", room="class", text="question?")
    assert student.recv_type("chat")["text"] == "question?"
    assert student.request(type="chat", room="class", text="again")["code"] == "slow_mode"
    teacher.send(type="mute", room="class", nick="stud1", duration=60)
    assert student.recv_type("mute")["duration"] == 60
    teacher.send(type="kick", room="class", nick="stud1", reason="end of lesson")
    assert student.recv_type("kick")["reason"] == "end of lesson"
    done = export(db, "--format", "jsonl")
    kinds = [json.loads(line)["type"] for line in done.stdout.splitlines()]
    assert kinds == ["topic", "mode", "mode", "chat", "mute", "kick"], kinds




def ask(peer, **msg) -> dict:
    """Send a request with a fresh id and return its answer, skipping others' events before it."""
    event = peer.ask(room="class", **msg)
    assert event["type"] != "error", event
    return event


def discussion(url: str, peers) -> list:
    """In `class`: ann's chat edited; bob's reacted to (👍 by ann and bob, 🎉 by bob) and then
    edited; a chat deleted; one left as sent. Returns the chats `history` gives afterwards."""
    ann, bob = members_in([url, url], peers, ["ann", "bob"], room="class")
    draft = ask(ann, type="chat", text="first draft")["seq"]
    ask(ann, type="edit", seq=draft, text="final *text*")
    question = ask(bob, type="chat", text="question?")["seq"]
    ask(ann, type="react", seq=question, emoji="👍")
    ask(bob, type="react", seq=question, emoji="👍")
    ask(bob, type="react", seq=question, emoji="🎉")
    ask(bob, type="edit", seq=question, text="question, <b>better</b>?")
    ask(ann, type="delete", seq=ask(ann, type="chat", text="oops")["seq"])
    ask(bob, type="chat", text="plain")
    items = ask(ann, type="history", limit=50)["messages"]
    return [item for item in items if item["type"] == "chat" and not item.get("deleted")]


def export_all(source: list) -> dict:
    """{format: stdout} of `export --room class` with `source` (["--db", FILE] or ["--redis", URL])."""
    outputs = {}
    for fmt in ("jsonl", "md", "html"):
        done = subprocess.run([*ROOMCHAT, "export", "--room", "class", *source, "--format", fmt],
                              env=roomchat_env(), capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
        outputs[fmt] = done.stdout
    return outputs


def timeless(outputs: dict) -> dict:
    """The outputs without what differs between two runs: times (and the `ts`, `edited` values)."""
    events = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    shapes = [{**e, "ts": 0, **({"edited": 0} if "edited" in e else {})} for e in events]
    return {"jsonl": shapes, **{fmt: re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "T", outputs[fmt])
                                 for fmt in ("md", "html")}}


def test_export_of_edited_and_reacted_chats_from_sqlite(make_server, peers, tmp_path):
    """SQLite: jsonl has each chat exactly as `history` gives it (current text, `edited`,
    `reactions`; the deleted one gone); md and html say "(edited)" and the reactions after the text."""
    db = str(tmp_path / "h.db")
    chats = discussion(make_server(db=db).url, peers)
    out = export_all(["--db", db])
    assert [json.loads(line) for line in out["jsonl"].splitlines()] == chats
    assert [(c["text"], "edited" in c, c.get("reactions")) for c in chats] == [
        ("final *text*", True, None), ("question, <b>better</b>?", True, {"👍": ["ann", "bob"], "🎉": ["bob"]}),
        ("plain", False, None)]
    md = out["md"]
    assert "**ann**: final \\*text\\* _(edited)_\n" in md
    assert "**bob**: question, \\<b\\>better\\</b\\>? _(edited)_ \\[👍 ann, bob; 🎉 bob\\]\n" in md
    assert "**bob**: plain\n" in md and "oops" not in md
    assert ("<b>bob</b>question, &lt;b&gt;better&lt;/b&gt;? <small>(edited)</small>"
            '<span class="reactions">👍 ann, bob; 🎉 bob</span></li>') in out["html"]
    assert "<b>bob</b>plain</li>" in out["html"] and "oops" not in out["html"]


def test_export_of_edited_and_reacted_chats_is_the_same_from_redis(cluster, redis_server, make_server, peers,
                                                                    tmp_path):
    """The same discussion on Redis and on SQLite: jsonl (each chat as `history` gives it), md and
    html are the same but for the times."""
    a, _b = cluster(2)
    on_redis = discussion(a.url, peers)
    from_redis = export_all(["--redis", redis_server.url])
    assert [json.loads(line) for line in from_redis["jsonl"].splitlines()] == on_redis
    db = str(tmp_path / "h.db")
    discussion(make_server(db=db).url, peers)
    assert timeless(from_redis) == timeless(export_all(["--db", db]))


def test_the_memory_engines_transcript_has_chats_as_history_gives_them(make_server, peers):
    """The memory engine's transcript carries the same chats, `edited` and `reactions`, as `history`."""
    server = make_server()
    chats = discussion(server.url, peers)
    assert server.engine.transcript("class") == chats
