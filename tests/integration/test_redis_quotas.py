"""History quotas on Redis (`--history-max-rooms`, `--history-max-age`, `--history-max-bytes`) and
what clients see at Redis's maxmemory: real redis-server, real processes."""

import pytest
import redis

from tests.helpers import SECRET, token, wait_for, with_token

pytestmark = pytest.mark.timeout(60)

FAST_BEAT = ("--redis-lease", "1")  # the quota pass runs once a beat (lease / 4)


def room_keys(client: redis.Redis, room: str) -> set:
    """The room's keys in Redis but its rules (topic, bans, mutes)."""
    return {k.decode() for k in client.keys(f"roomchat:{{{room}}}:*")} - {f"roomchat:{{{room}}}:topic"}


@pytest.fixture
def store(redis_server):
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


def test_quiet_rooms_past_the_room_quota_are_forgotten_and_their_seqs_go_on(redis_server, store, spawn, peers):
    """With --history-max-rooms 1, the quieter of two rooms nobody is in loses every key but its
    rules (its edited chats' states too); a room with a member is kept; the forgotten room's next
    chat takes a seq above its old ones, and a client resuming it after its last seq gets nothing
    twice."""
    server = spawn("--redis", redis_server.url, *FAST_BEAT, "--history-max-rooms", "1", "--token-secret", SECRET)
    talker = peers(with_token(server.url, token("ann", op=True)))  # an operator: the topic is a rule
    talker.join("old")
    assert talker.request(type="topic", room="old", topic="kept")["type"] == "topic"
    assert [e["seq"] for e in talker.chat_all("old", ["a", "b", "c"])] == [1, 2, 3]
    assert talker.request(type="edit", room="old", seq=1, text="a!")["seq"] == 4  # its state in `cur`
    talker.request(type="leave", room="old")
    talker.join("new")
    talker.chat_all("new", ["x"])
    wait_for(lambda: not room_keys(store, "old"), timeout=15)
    assert store.get("roomchat:{old}:topic") == b"kept"  # a rule: stays
    assert store.xlen("roomchat:{new}:hist") == 1  # someone is in it: kept
    other = peers(server.url)
    assert other.join("old", after=4)["history"] == []
    assert [e["seq"] for e in other.chat_all("old", ["d"])] == [5]
    assert talker.request(type="history", room="new")["messages"][0]["text"] == "x"


def test_chats_past_the_age_quota_go_and_a_quiet_room_is_forgotten(redis_server, store, spawn, peers):
    """With --history-max-age 1, a room's events older than a second (and the states of the chats
    reactions changed) are deleted while its member stays (the room is kept); once it is quiet
    and empty it is forgotten, and its seqs go on."""
    server = spawn("--redis", redis_server.url, *FAST_BEAT, "--history-max-age", "1")
    talker = peers(server.url)
    talker.join("r")
    assert [e["seq"] for e in talker.chat_all("r", ["a", "b", "c"])] == [1, 2, 3]
    assert talker.request(type="react", room="r", seq=1, emoji="👍")["seq"] == 4  # its state in `cur`
    wait_for(lambda: store.xlen("roomchat:{r}:hist") == 0 and not store.exists("roomchat:{r}:cur"), timeout=15)
    assert store.exists("roomchat:{r}:members")
    assert [e["seq"] for e in talker.chat_all("r", ["d"])] == [5]
    talker.request(type="leave", room="r")
    wait_for(lambda: not room_keys(store, "r"), timeout=15)
    talker.join("r")
    assert [e["seq"] for e in talker.chat_all("r", ["e"])] == [6]


def test_past_the_byte_quota_the_quietest_rooms_are_forgotten(redis_server, store, spawn, peers):
    """With --history-max-bytes a little above what Redis uses empty, a room of about 1 MB of chats
    is forgotten once nobody is in it; the room with a member is kept."""
    quota = store.info("memory")["used_memory"] + 600_000
    server = spawn("--redis", redis_server.url, *FAST_BEAT, "--history-max-bytes", str(quota))
    talker, stayer = peers(server.url), peers(server.url)
    stayer.join("small")
    stayer.chat_all("small", ["hello"])
    talker.join("big")
    talker.chat_all("big", ["x" * 2000] * 500)
    talker.request(type="leave", room="big")
    wait_for(lambda: not room_keys(store, "big"), timeout=15)
    assert store.xlen("roomchat:{small}:hist") == 1


def test_at_redis_maxmemory_requests_get_unavailable_and_the_quota_frees_memory(redis_server, store, spawn, peers):
    """Redis past its maxmemory (noeviction; set below what it uses, so it stays there): a chat and
    a join are answered `unavailable`, a newcomer on another process still gets its welcome (not a
    1013), ping and who work, a member's leave reaches everyone; once the flooded room is empty the
    byte quota forgets it (the heartbeat works at maxmemory) and chats go through again."""
    quota = store.info("memory")["used_memory"] + 500_000
    a, b = (spawn("--redis", redis_server.url, *FAST_BEAT, "--history-max-bytes", str(quota)) for _ in range(2))
    flooder, watcher = peers(a.url), peers(b.url)
    watcher.join("calm")
    flooder.join("calm")
    watcher.recv_type("presence")
    flooder.join("flood")
    flooder.chat_all("flood", ["x" * 2000] * 500)  # the flooder is in it: kept past the quota
    store.config_set("maxmemory-policy", "noeviction")
    store.config_set("maxmemory", store.info("memory")["used_memory"] - 300_000)
    assert flooder.request(type="chat", room="calm", text="more")["code"] == "unavailable"
    newcomer = peers(b.url)
    assert newcomer.nick.startswith("guest-")
    assert newcomer.request(type="join", room="other")["code"] == "unavailable"
    assert newcomer.request(type="ping") == {"type": "pong"}
    assert newcomer.request(type="who", room="calm")["members"] == [watcher.nick, flooder.nick]
    flooder.request(type="leave", room="calm")
    left = watcher.recv_type("presence")
    assert (left["event"], left["nick"]) == ("leave", flooder.nick)
    assert newcomer.request(type="who", room="calm")["members"] == [watcher.nick]
    flooder.request(type="leave", room="flood")
    wait_for(lambda: not room_keys(store, "flood"), timeout=15)
    assert watcher.request(type="chat", room="calm", text="room again")["type"] == "chat"
