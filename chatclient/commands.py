"""What a typed line means: a plain line is chat, a line starting with `/` is a command."""

import string
from dataclasses import dataclass

HELP = """\
commands:
  TEXT                send TEXT to the current room (start it with // to send a leading /)
  /join ROOM          join ROOM (or switch to it) and make it the current room
  /leave [ROOM]       leave ROOM (default: the current room)
  /nick NICK          change your nick
  /msg NICK TEXT      send a direct message to NICK
  /who [ROOM]         list who is in ROOM (default: the current room)
  /rooms              list the rooms with their member counts
  /history [N]        show the last N messages of the current room (default 20, at most 200)
in the current room, a message named by its #SEQ (shown before its sender):
  /edit SEQ TEXT      replace the text of your message SEQ (within the server's edit window)
  /delete SEQ         delete your message SEQ (operators: anyone's)
  /react SEQ EMOJI    add your EMOJI to message SEQ, or take it back
  /search [WORDS]     the newest messages with all these words (prefixes match, any case);
                      alone: the next older page of the last search
  /mark               mark the room read up to the last message shown (another device of yours sees it)
operators (a token with op), in the current room:
  /topic [TEXT]       show the room's topic; with TEXT set it (/topic - clears it)
  /kick NICK [REASON] take NICK out of the room
  /ban NICK TIME [REASON]   keep NICK out for TIME (90, 90s, 10m, 2h, 1d; 0 lifts the ban)
  /mute NICK TIME [REASON]  NICK may read but not chat for TIME (0 lifts it)
  /mode [moderated|open] [slow TIME|slow off]   show or set the room's mode
  /quit               leave once the server has confirmed what you sent
  /help               show this help"""

DEFAULT_HISTORY = 20
MAX_HISTORY = 200


class UsageError(ValueError):
    """A line that cannot be turned into a command; the message says how to write it."""


@dataclass(frozen=True)
class Command:
    name: str  # say, join, leave, nick, msg, who, rooms, history, quit, help, topic, kick, ban, mute, mode,
    # edit, delete, react, search, mark
    args: tuple = ()


# name -> (usage, fewest and most words after the command); a /msg's TEXT counts as one word, and so
# does a ROOM or NICK, so that a name with a space is refused for its space, not as a usage error
USAGE = {
    "join": ("/join ROOM", 1, 1),
    "leave": ("/leave [ROOM]", 0, 1),
    "nick": ("/nick NICK", 1, 1),
    "msg": ("/msg NICK TEXT", 2, 2),
    "who": ("/who [ROOM]", 0, 1),
    "rooms": ("/rooms", 0, 0),
    "history": ("/history [N]", 0, 1),
    "quit": ("/quit", 0, 0),
    "help": ("/help", 0, 0),
    "topic": ("/topic [TEXT]", 0, 1),
    "kick": ("/kick NICK [REASON]", 1, 2),
    "ban": ("/ban NICK TIME [REASON]", 2, 3),
    "mute": ("/mute NICK TIME [REASON]", 2, 3),
    "mode": ("/mode [moderated|open] [slow TIME|slow off]", 0, 3),
    "edit": ("/edit SEQ TEXT", 2, 2),
    "delete": ("/delete SEQ", 1, 1),
    "react": ("/react SEQ EMOJI", 2, 2),
    "search": ("/search [WORDS]", 0, 1),
    "mark": ("/mark", 0, 0),
}
MAX_QUERY = 200  # characters in a search (PROTOCOL.md, search)
MAX_DURATION = 30 * 86400  # a ban or mute lasts at most 30 days (PROTOCOL.md, Moderation)
MAX_SLOW = 3600  # slow mode's longest wait
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse(line: str) -> Command | None:
    """Turn one input line into a Command; None for a blank line. Raises UsageError."""
    if not line.strip():
        return None
    if not line.startswith("/"):
        return Command("say", (line,))
    if line.startswith("//"):
        return Command("say", (line[1:],))
    name, _, rest = line[1:].partition(" ")
    name = name.lower()
    if name not in USAGE:
        raise UsageError(f"Unknown command /{name}; /help lists the commands.")
    usage, least, most = USAGE[name]
    rest = rest.strip()
    if name in ("join", "leave", "who", "nick", "topic", "search"):
        args = (rest,) if rest else ()
    else:
        args = tuple(rest.split(None, {"msg": 1, "kick": 1, "ban": 2, "mute": 2, "edit": 1}.get(name, -1)))
    if not least <= len(args) <= most:
        raise UsageError(f"Usage: {usage}")
    if name in ("edit", "delete", "react"):
        if not args[0].lstrip("#").isdigit() or int(args[0].lstrip("#")) < 1:
            raise UsageError(f"Usage: {usage}, where SEQ is the number shown as #SEQ before a message")
        return Command(name, (int(args[0].lstrip("#")), *args[1:]))
    if name == "search" and args and len(args[0]) > MAX_QUERY:
        raise UsageError(f"A search is at most {MAX_QUERY} characters; this one has {len(args[0])}.")
    if name in ("kick", "ban", "mute"):
        check_name(args[0], "nick")
        if name != "kick":
            args = (args[0], duration(args[1], f"Usage: {usage}", MAX_DURATION), *args[2:])
        return Command(name, args)
    if name == "mode":
        return Command(name, _mode(args, usage))
    if name == "topic":
        return Command(name, ("",) if args == ("-",) else args)
    if name in ("join", "leave", "who") and args:
        check_name(args[0], "room")
    elif name in ("nick", "msg"):
        check_name(args[0], "nick")
    elif name == "history":
        args = (_history_count(args[0]) if args else DEFAULT_HISTORY,)
    return Command(name, args)


# what PROTOCOL.md allows: kind -> (what it is called, its characters, longest, the rule in words)
NAMES = {
    "room": ("room name", frozenset(string.ascii_letters + string.digits + "_-.#"), 64,
             "1-64 letters, digits, '_', '-', '.' or '#'"),
    "nick": ("nick", frozenset(string.ascii_letters + string.digits + "_-."), 32,
             "1-32 letters, digits, '_', '-' or '.'"),
}


def check_name(name: str, kind: str) -> str:
    """`name` if it is a valid room or nick (`kind`) name; else raises UsageError saying why."""
    label, allowed, longest, rule = NAMES[kind]
    bad = sorted(set(name) - allowed)
    if name and len(name) <= longest and not bad:
        return name
    why = f"it has {len(name)} characters" if len(name) > longest else "it may not contain " + " or ".join(
        "a space" if ch == " " else repr(ch) for ch in bad)
    raise UsageError(f"{name!r} is not a valid {label}: a {label} is {rule}; {why}.")


def duration(word: str, usage: str, longest: int) -> int:
    """Seconds in `word`: a whole number with an optional unit s, m, h or d ("90", "10m", "2h").
    Raises UsageError (with `usage`) for anything else or more than `longest` seconds."""
    number, unit = word.rstrip("smhdSMHD"), word[len(word.rstrip("smhdSMHD")):].lower()
    if not number.isdigit() or unit not in UNITS:
        raise UsageError(f"{usage}: TIME is a whole number of seconds, or with a unit: 90s, 10m, 2h, 1d")
    seconds = int(number) * UNITS[unit]
    if seconds > longest:
        raise UsageError(f"{usage}: TIME is at most {longest} seconds")
    return seconds


def _mode(words: tuple, usage: str) -> tuple:
    """/mode's words as ((field, value), ...): moderated/open, slow TIME/slow off; () shows the mode."""
    fields, rest = [], [w.lower() for w in words]
    while rest:
        word = rest.pop(0)
        if word in ("moderated", "+m", "open", "-m"):
            fields.append(("moderated", word in ("moderated", "+m")))
        elif word == "slow" and rest:
            value = rest.pop(0)
            fields.append(("slow", 0 if value in ("off", "0") else duration(value, f"Usage: {usage}", MAX_SLOW)))
        else:
            raise UsageError(f"Usage: {usage}")
    if len({name for name, _ in fields}) < len(fields):
        raise UsageError(f"Usage: {usage}")
    return tuple(fields)


def _history_count(word: str) -> int:
    if not word.isdigit() or not 1 <= int(word) <= MAX_HISTORY:
        raise UsageError(f"Usage: /history [N], where N is from 1 to {MAX_HISTORY}")
    return int(word)
