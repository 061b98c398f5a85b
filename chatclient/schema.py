"""Protocol v1 as JSON Schema (draft 2020-12): load `schema/*.json` and check messages against it.

    requests = validator("requests")          # what a client sends
    events = validator("events")              # what the server sends
    problems(events, {"type": "chat"})        # -> ["'room' is a required property", ...]

The schema files refer to each other by file name (`common.json#/$defs/nick`), so any JSON Schema
tool that resolves relative references next to the file reads them as they are.
"""

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
KINDS = ("requests", "events")


@cache
def registry() -> Registry:
    """Every file in schema/, each under its file name, so relative `$ref`s between them resolve."""
    return Registry().with_resources(
        (path.name, Resource.from_contents(json.loads(path.read_text("utf-8")))) for path in SCHEMA_DIR.glob("*.json")
    )


@cache
def validator(kind: str) -> Draft202012Validator:
    """The validator for `kind`, "requests" or "events". Raises KeyError for another kind."""
    if kind not in KINDS:
        raise KeyError(kind)
    schema = registry().contents(f"{kind}.json")
    return Draft202012Validator(schema, registry=registry())


def problems(checker: Draft202012Validator, message) -> list[str]:
    """Every way `message` breaks the schema, as short sentences with the field's path; [] if none."""
    out = []
    for error in sorted(checker.iter_errors(message), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path)
        out.append(f"{where}: {error.message}" if where else error.message)
    return out
