"""Every copy of a protocol fact agrees with chatserver/protocol.py, the one place it is written.

The copies: the codes the server raises, PROTOCOL.md's tables, schema/, metrics' labels, the
handlers, README's limits table, the chat page (web/) and the terminal client (chatclient/).
"""

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatclient.events import FIELDS
from chatclient.session import EVENTS, Session
from chatclient.terminal import FINAL_CLOSES
from chatserver import protocol
from chatserver.ops.metrics import Metrics
from chatserver.rooms.registry import REPLY_BUILDERS, SEARCH_WAIT, SEARCHERS
from handlers import HANDLERS
from tests.services import require_program

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("chatserver/**/*.py"), *ROOT.glob("handlers/*.py"), ROOT / "roomchat.py"])
PAGE_SCRIPTS = sorted(ROOT.glob("web/static/*.js"))


def markdown_table(path: Path, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with `header`, as lists of cells."""
    lines = path.read_text("utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def schema(name: str) -> dict:
    return json.loads((ROOT / "schema" / f"{name}.json").read_text("utf-8"))


def raised_error_codes() -> dict[str, list[str]]:
    """code -> where: every `ChatError("<code>", ...)` in the server's source."""
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ChatError"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.setdefault(node.args[0].value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def js_object_keys(source: str, name: str) -> set[str] | None:
    """The keys of `const NAME = { key: ..., ... };` in a script, or None when it has none."""
    match = re.search(rf"\bconst {name} = \{{(.*?)\n\}};", source, re.S)
    if match is None:
        return None
    return set(re.findall(r"^\s*\"?([A-Za-z_]\w*)\"?\s*:", match.group(1), re.M))


def js_string_list(source: str, name: str) -> set[str] | None:
    """The strings of `const NAME = [...]` or `new Set([...])` in a script, or None when it has none."""
    match = re.search(rf"\bconst {name} = (?:new Set\()?\[(.*?)\]", source, re.S)
    return None if match is None else set(re.findall(r"\"([^\"]+)\"", match.group(1)))


# -- error codes -------------------------------------------------------------------------------


def test_every_raised_error_code_is_defined_and_every_defined_one_raised():
    """Each code in a ChatError the server raises is in ERROR_CODES, and each in ERROR_CODES is
    raised somewhere, but `unsupported`: no engine answers it now; it stays for clients of servers
    that cannot search (PROTOCOL.md's error table)."""
    raised = raised_error_codes()
    unknown = {code: where for code, where in raised.items() if code not in protocol.ERROR_CODES}
    assert unknown == {}
    assert set(protocol.ERROR_CODES) - set(raised) == {"unsupported"}


def test_error_codes_match_protocol_md():
    """PROTOCOL.md's error table lists exactly ERROR_CODES."""
    listed = {row[0].strip("`") for row in markdown_table(ROOT / "PROTOCOL.md", "| code | when |")}
    assert listed == set(protocol.ERROR_CODES)


def test_error_codes_match_the_event_schema():
    """schema/events.json's error code enum is ERROR_CODES."""
    assert set(schema("events")["$defs"]["error_code"]["enum"]) == set(protocol.ERROR_CODES)


def test_error_codes_each_have_a_one_line_meaning():
    """ERROR_CODES maps each code to a non-empty one-line meaning."""
    assert all(isinstance(v, str) and v and "\n" not in v for v in protocol.ERROR_CODES.values())


def labels(metrics: Metrics, family: str, label: str) -> set[str]:
    text = metrics.exposition().decode()
    return {s.labels[label] for f in text_string_to_metric_families(text) if f.name == family for s in f.samples}


def test_metrics_labels_are_the_protocols():
    """/metrics counts errors by exactly ERROR_CODES, requests by REQUEST_TYPES (+ unknown, invalid),
    published room events by ROOM_EVENTS: every label exists from the start, at 0."""
    metrics = Metrics()
    assert labels(metrics, "roomchat_errors", "code") == set(protocol.ERROR_CODES)
    assert labels(metrics, "roomchat_messages_received", "type") == protocol.REQUEST_TYPES | {"unknown", "invalid"}
    assert labels(metrics, "roomchat_room_events_published", "type") == protocol.ROOM_EVENTS


# -- request and event types -------------------------------------------------------------------


def test_every_request_type_has_a_handler_and_a_schema():
    """handlers/ has one handler per REQUEST_TYPES entry, and schema/requests.json one branch each."""
    requests = schema("requests")
    assert set(HANDLERS) == protocol.REQUEST_TYPES
    assert set(requests["properties"]["type"]["enum"]) == protocol.REQUEST_TYPES
    branches = {b["if"]["properties"]["type"]["const"] for b in requests["allOf"]}
    assert branches == protocol.REQUEST_TYPES


def test_every_event_type_is_in_the_schema_and_back():
    """schema/events.json's type enum and its branches are exactly EVENT_TYPES."""
    events = schema("events")
    assert set(events["properties"]["type"]["enum"]) == protocol.EVENT_TYPES
    assert {b["if"]["properties"]["type"]["const"] for b in events["allOf"]} == protocol.EVENT_TYPES
    assert protocol.ROOM_EVENTS <= protocol.EVENT_TYPES


def test_terminal_client_knows_every_event_shape():
    """chatclient/events.py checks the shape of exactly EVENT_TYPES."""
    assert set(FIELDS) == protocol.EVENT_TYPES


def test_terminal_client_renders_every_event_type_or_ignores_it_on_purpose():
    """The terminal client's one event table (chatclient/session.py EVENTS) names exactly the
    protocol's event types: each a Session method that shows it, or None (deliberately not
    handled, the reason beside it)."""
    assert set(EVENTS) == protocol.EVENT_TYPES
    for kind, method in EVENTS.items():
        assert method is None or callable(getattr(Session, method, None)), kind


def test_page_handles_every_event_type_or_ignores_it_on_purpose():
    """The chat page's HANDLERS table (web/static/*.js) has an entry for every event type, or the
    type is in its `IGNORED` table (with the reason); neither names a type the protocol does not have."""
    handled: set[str] = set()
    ignored: set[str] = set()
    for path in PAGE_SCRIPTS:
        source = path.read_text("utf-8")
        handled |= js_object_keys(source, "HANDLERS") or set()
        ignored |= js_object_keys(source, "IGNORED") or set()
    assert handled, "no `const HANDLERS = {...}` table found in web/static/*.js"
    assert (handled | ignored) - protocol.EVENT_TYPES == set()
    assert protocol.EVENT_TYPES - handled - ignored == set()
    assert handled & ignored == set()  # each type in one table only


# -- close codes and limits --------------------------------------------------------------------


def test_close_codes_match_protocol_md():
    """PROTOCOL.md's close-code table lists exactly the CloseCode values."""
    listed = {int(row[0]) for row in markdown_table(ROOT / "PROTOCOL.md", "| close code | why |")}
    assert listed == {int(code) for code in protocol.CloseCode}


def test_no_close_code_is_written_as_a_number_in_the_server():
    """The server passes close codes by CloseCode name: no `close(<number>, ...)`,
    `close_frame(<number>, ...)` or `CloseConnection(<number>, ...)` in its source."""
    calls = {"close", "close_all", "close_frame", "CloseConnection", "fail"}
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in calls
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, int)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_clients_stop_reconnecting_after_the_servers_final_close_codes():
    """The page and the terminal client give up on exactly the codes that mean "do not come back":
    TOKEN_EXPIRED and REPLACED."""
    final = {protocol.CloseCode.TOKEN_EXPIRED, protocol.CloseCode.REPLACED}
    page = (ROOT / "web" / "static" / "connection.js").read_text("utf-8")
    match = re.search(r"\bconst FINAL_CLOSES = \{(.*?)\n\};", page, re.S)
    assert match, "no `const FINAL_CLOSES = {...}` in web/static/connection.js"
    assert {int(code) for code in re.findall(r"^\s*(\d+)\s*:", match.group(1), re.M)} == final
    assert set(FINAL_CLOSES) == final


def test_limits_table_in_the_settings_page_is_protocol_mds():
    """docs/settings.md's limits table is PROTOCOL.md's, row for row."""
    header = "| limit | default |"
    assert markdown_table(ROOT / "docs" / "settings.md", header) == markdown_table(ROOT / "PROTOCOL.md", header)


def test_limits_table_gives_the_registrys_reply_and_search_slots():
    """PROTOCOL.md's limits table says REPLY_BUILDERS history reads and SEARCHERS searches at once,
    and how long a search waits for a slot (SEARCH_WAIT)."""
    rows = {row[0]: row for row in markdown_table(ROOT / "PROTOCOL.md", "| limit | default |")}
    reads = "history reads at once (per process: `joined`, `history`, the HTTP API's read)"
    assert rows[reads][1].startswith(f"{REPLY_BUILDERS} ")
    assert rows["searches at once (per process)"][1].startswith(f"{SEARCHERS}, ")
    assert f"waits up to {SEARCH_WAIT:g} s for a slot, then `unavailable`" in rows["searches at once (per process)"][-1]


# -- the nick rule and nick equality -----------------------------------------------------------

NICK_CASES = ["ann", "A", "x" * 32, "x" * 33, "", "ann bob", "ann\n", "ann.b-c_d", "é", "ann#1", "0", "rn", "Bi11"]
SAME_NICK_CASES = [("ann", "ANN"), ("bill", "Bi11"), ("moe", "rnoe"), ("o0", "OO"), ("ann", "anne"), ("li", "l1"),
                   ("rn", "m"), ("ann", "bob"), ("Il1", "lll"), ("bob", "b0b")]


def test_schema_nick_and_room_patterns_are_the_servers():
    """schema/common.json's nick and room patterns are NICK_RE and ROOM_RE, anchored."""
    defs = schema("common")["$defs"]
    assert defs["nick"]["pattern"] == f"^{protocol.NICK_RE.pattern}(?![\\s\\S])"
    assert defs["room"]["pattern"] == f"^{protocol.ROOM_RE.pattern}(?![\\s\\S])"


def test_page_form_patterns_are_the_servers():
    """The page's nick and room inputs (web/index.html `pattern=`) use NICK_RE and ROOM_RE."""
    patterns = re.findall(r'pattern="([^"]+)"', (ROOT / "web" / "index.html").read_text("utf-8"))
    assert protocol.NICK_RE.pattern in patterns
    assert protocol.ROOM_RE.pattern in patterns


def page_answers(node: str, nicks: list, pairs: list) -> dict:
    """Run the page's own NICK_RE and sameNick (web/static/state.js) under node on the cases."""
    script = f"""
// the few browser globals state.js reads when it loads
globalThis.localStorage = globalThis.sessionStorage = {{getItem() {{ return null; }}, setItem() {{}},
  removeItem() {{}}}};
globalThis.location = {{search: "", hash: "", href: "http://localhost/"}};
const page = await import({json.dumps((ROOT / "web" / "static" / "state.js").as_uri())});
const nicks = {json.dumps(nicks)}, pairs = {json.dumps(pairs)};
console.log(JSON.stringify({{valid: nicks.map((n) => page.NICK_RE.test(n)),
  same: pairs.map(([a, b]) => page.sameNick(a, b))}}));
"""
    done = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def page():
    node = require_program("node", "apt-get install nodejs")
    return page_answers(node, NICK_CASES, SAME_NICK_CASES)


def test_page_nick_rule_is_the_servers(page):
    """The page's NICK_RE accepts exactly the nicks the server's nick rule accepts."""
    assert dict(zip(NICK_CASES, page["valid"], strict=True)) == {n: protocol.valid_nick(n) for n in NICK_CASES}


def test_page_nick_equality_is_the_servers(page):
    """The page's sameNick calls two nicks the same exactly when fold_nick does (case and look-alikes)."""
    expected = {(a, b): protocol.fold_nick(a) == protocol.fold_nick(b) for a, b in SAME_NICK_CASES}
    assert dict(zip(map(tuple, SAME_NICK_CASES), page["same"], strict=True)) == expected


def test_page_room_rule_is_the_servers():
    """The page's ROOM_RE (web/static/state.js) is the server's room pattern, anchored."""
    source = (ROOT / "web" / "static" / "state.js").read_text("utf-8")
    found = re.search(r"export const ROOM_RE = /\^(.*)\$/;", source)
    assert found and found.group(1) == protocol.ROOM_RE.pattern
