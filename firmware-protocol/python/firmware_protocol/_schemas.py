"""Loading the JSON Schemas, which stay the source of truth of v1.

The schema files live in ``firmware-protocol/schemas``; an installed wheel
carries them inside the package as ``firmware_protocol/schemas``. Validators
are built on first use, never at import time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

import jsonschema_rs

from .topics import MessageKind

_HERE: Final = Path(__file__).resolve().parent


def schema_dir() -> Path:
    for candidate in (_HERE / "schemas", _HERE.parent.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"protocol schemas not found next to {_HERE}")


@cache
def load_schemas() -> Mapping[str, Mapping[str, Any]]:
    """All schema documents by file name (``telemetry.schema.json`` ...)."""
    out: dict[str, Mapping[str, Any]] = {}
    directory = schema_dir()
    for path in sorted(directory.glob("*.schema.json")):
        out[path.name] = json.loads(path.read_text(encoding="utf-8"))
    if not out:
        raise FileNotFoundError(f"no schemas under {directory}")
    return out


def schema_name(kind: MessageKind) -> str:
    return f"{kind.value}.schema.json"


@cache
def validator(kind: MessageKind) -> jsonschema_rs.Validator:
    schemas = load_schemas()
    registry = jsonschema_rs.Registry([(s["$id"], dict(s)) for s in schemas.values()])
    return jsonschema_rs.validator_for(dict(schemas[schema_name(kind)]), registry=registry)


def first_error(kind: MessageKind, instance: object) -> str:
    """A readable description of why ``instance`` fails (slow path only)."""
    for err in validator(kind).iter_errors(instance):
        path = "/".join(str(p) for p in err.instance_path) or "(root)"
        return f"{path}: {err.message}"
    return "schema violation"
