"""The package map in chatserver/__init__.py stays true: imports run the way it says.

Every `import` in the server's source (module level or inside a function) is read with `ast`; no
module is imported or run. Each module belongs to one part; a part may import its own modules,
the shared ones, and the parts its rule names.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SHARED = {"protocol", "errors", "trace", "logs", "version"}  # every part may use these
ALLOWED = {  # part -> the other parts it may import, besides SHARED
    "entry": {"app", "config", "transport", "rooms", "engines", "engines.base", "ops", "wire", "handlers"},
    "app": {"config", "transport", "rooms", "engines", "engines.base", "ops", "wire"},
    "handlers": {"rooms"},
    "rooms": {"engines.base", "config", "ops", "wire"},
    "engines": {"engines.base", "ops"},
    "engines.base": set(),
    "transport": {"wire"},
    "wire": set(),
    "ops": {"wire"},
    "config": {"wire"},
    "protocol": {"errors", "version"},
    "errors": set(),
    "trace": set(),
    "logs": {"wire"},
    "version": set(),
}
# Known exceptions, each with its reason; the test fails when one is no longer needed.
EXCEPTIONS = {
    # encode() frames an event; wire.frames takes CloseCode from protocol (imported last, see there)
    ("chatserver.protocol", "chatserver.wire.frames"),
    # the Redis engine asks which events take a member out of a room (kick, ban)
    ("chatserver.engines.redis", "chatserver.rooms.moderation"),
    # `roomchat.py export` is a command of its own: it reads a store directly, with the settings' names
    ("chatserver.ops.export", "chatserver.config"),
    ("chatserver.ops.export", "chatserver.engines.base"),
    ("chatserver.ops.export", "chatserver.engines.sqlite_file"),
    ("chatserver.ops.export", "chatserver.engines.redis"),
}
ONLY_IN = {  # a third-party package -> the only modules that may import it
    "sqlite3": lambda module: module.startswith("chatserver.engines.sqlite"),
    "redis": lambda module: module.startswith("chatserver.engines.redis"),
    "websocket_server": lambda module: module.startswith("chatserver.transport."),
}


def part(module: str) -> str:
    """The part of the map a module belongs to."""
    if module == "roomchat":
        return "entry"
    if module.split(".")[0] == "handlers":
        return "handlers"
    names = {"chatserver": "version", "chatserver.ops.trace": "trace", "chatserver.ops.logs": "logs",
             "chatserver.engines.base": "engines.base"}
    if module in names:
        return names[module]
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def server_modules() -> dict[str, Path]:
    paths = [*ROOT.glob("chatserver/**/*.py"), *ROOT.glob("handlers/*.py"), ROOT / "roomchat.py"]
    return {module_name(p): p for p in sorted(paths)}


MODULES = server_modules()


def imports(path: Path) -> set[str]:
    """Every module `path` imports, as a full dotted name (a `from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
    return found


GRAPH = {module: imports(path) for module, path in MODULES.items()}


def test_every_module_is_on_the_map():
    """Each module of the server belongs to a part the map has a rule for."""
    assert {part(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_the_way_the_map_says(module):
    """A module imports only its own part, the shared modules and the parts its part's rule allows."""
    mine = part(module)
    wrong = sorted(
        target for target in GRAPH[module]
        if target in MODULES and part(target) != mine and part(target) not in SHARED | ALLOWED[mine]
        and (module, target) not in EXCEPTIONS
    )
    assert wrong == []


def test_every_exception_is_still_needed():
    """Each listed exception is an import that exists (a fixed one must leave the list)."""
    assert {(m, t) for m, t in EXCEPTIONS if t in GRAPH.get(m, ())} == EXCEPTIONS


def test_shared_modules_import_no_part():
    """protocol, errors and trace sit at the bottom: they import no folder but, for encode, wire.frames."""
    for module in ("chatserver.protocol", "chatserver.errors", "chatserver.ops.trace"):
        inner = {t for t in GRAPH[module] if t in MODULES and (module, t) not in EXCEPTIONS}
        assert {part(t) for t in inner} <= {"errors", "version"}, module


@pytest.mark.parametrize("package", sorted(ONLY_IN))
def test_third_party_packages_stay_in_their_folder(package):
    """sqlite3 only in engines/sqlite*, redis only in engines/redis*, websocket_server only in transport/."""
    users = sorted(m for m, deps in GRAPH.items() if any(d == package or d.startswith(package + ".") for d in deps))
    assert users and all(ONLY_IN[package](m) for m in users), users


# selftest --token-secret-file mints tokens with the server's own rules, as `roomchat.py token` does
CLIENT_EXCEPTIONS = {"selftest.py": {"chatserver.config", "chatserver.rooms.identity"}}


def test_the_terminal_client_is_a_client_only():
    """chatclient/ imports nothing of the server: it speaks the protocol like any other client."""
    for path in ROOT.glob("chatclient/*.py"):
        server = {d for d in imports(path) if d.split(".")[0] in ("chatserver", "handlers")}
        assert server <= CLIENT_EXCEPTIONS.get(path.name, set()), path.name


def test_each_folder_says_what_it_holds_and_may_import():
    """Each folder's __init__.py has a docstring naming its modules and what it may import."""
    for folder in [*ROOT.glob("chatserver/*/"), ROOT / "handlers"]:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text("utf-8"))) or ""
        assert "import" in doc, folder.name
        modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
        missing = sorted(m for m in modules if m not in doc) if folder.name != "handlers" else []
        assert missing == [], (folder.name, missing)


def test_the_package_map_names_every_part():
    """chatserver/__init__.py's map names every folder and top-level module of the package."""
    doc = ast.get_docstring(ast.parse((ROOT / "chatserver" / "__init__.py").read_text("utf-8"))) or ""
    parts = {f"{p.name}/" for p in ROOT.glob("chatserver/*/") if (p / "__init__.py").exists()}
    parts |= {p.name for p in ROOT.glob("chatserver/*.py")} - {"__init__.py"}
    assert sorted(p for p in parts if p not in doc) == []


def test_the_call_tree_names_only_what_exists():
    """Every dotted name in chatserver/__init__.py's call tree is a real module attribute, so the
    walk through one chat, one join and one nick change cannot go stale."""
    import importlib
    import re

    import chatserver

    tree = chatserver.__doc__.split("Three requests through the code", 1)[1]
    names = re.findall(r"^\s+((?:chatserver|rooms|engines|transport|wire|app|handlers)\.[\w.]+)", tree, re.M)
    assert len(names) >= 20
    for name in names:
        dotted = name if name.startswith(("chatserver.", "handlers.")) else f"chatserver.{name}"
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
            try:
                thing = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            thing = getattr(thing, attr)  # AttributeError: the tree names something that is gone
