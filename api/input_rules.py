"""Value rules shared by the contract's models (`api.schemas`, `api.events`): what a field
takes, said the same way to pydantic (which refuses the rest with a reason naming the
field) and to the OpenAPI document (enums, patterns, bounds).

- **Time zones** are IANA zone names (`Europe/Berlin`, `UTC`): the tz database's names,
  without the files that are no zone of their own (`Factory`, `localtime`, `posixrules`
  and the `posix/` and `right/` copies). Checked against the set, never by opening a file,
  so a 300-character name is a 422, not an `ENAMETOOLONG` from the file system.
- **Numbers are finite**: JSON has no NaN or Infinity, and Herald writes none (every JSON
  it writes refuses them), so a request carrying one (Python's `json` reads `NaN`) is
  refused at the door rather than stored as a value no reader can parse.
- **Integers and booleans are strict**: `false` is not 0 and `1` is not `true`.
- **Timestamps** are epoch seconds below `EPOCH_MAX` (year 2286): finite and bounded, so a
  schedule is always a time the scheduler reaches.
- **Extra event fields** (what an order update or a price drop carries along into the log)
  are at most `EXTRA_MAX_DEPTH` levels deep and `EXTRA_MAX_BYTES` as JSON, all together.
"""

from __future__ import annotations

import json
import math
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
)

from pipelines import template_model

APNS_TOKEN_PATTERN = r"^[0-9a-fA-F]{64}$"
# FCM registration tokens: "<instance id>:<opaque>" of URL-safe base64 characters.
FCM_TOKEN_PATTERN = r"^[A-Za-z0-9_\-]{8,}:[A-Za-z0-9_\-]{20,4000}$"
APNS_TOKEN = re.compile(APNS_TOKEN_PATTERN)
FCM_TOKEN = re.compile(FCM_TOKEN_PATTERN)
# The token's shape by platform, for OpenAPI (the model validator below checks it).
TOKEN_BY_PLATFORM = {
    "allOf": [
        {
            "if": {"properties": {"platform": {"const": "ios"}}, "required": ["platform"]},
            "then": {"properties": {"token": {"pattern": APNS_TOKEN_PATTERN}}},
            "else": {"properties": {"token": {"pattern": FCM_TOKEN_PATTERN}}},
        }
    ]
}

# A campaign variant is inline copy or a template, never both (`api.schemas.Variant`).
VARIANT_SHAPE = {
    "oneOf": [
        {
            "required": ["title", "body"],
            "properties": {
                "title": {"type": "string"},
                "body": {"type": "string"},
                "template_id": {"type": "null"},
                "variables": {"type": "null"},
            },
        },
        {
            "required": ["template_id"],
            "properties": {
                "template_id": {"type": "string"},
                "title": {"type": "null"},
                "body": {"type": "null"},
            },
        },
    ]
}

_NOT_ZONES = {"Factory", "localtime", "posixrules"}
TIMEZONES: tuple[str, ...] = tuple(
    sorted(
        name
        for name in zoneinfo.available_timezones()
        if name not in _NOT_ZONES and not name.startswith(("posix/", "right/"))
    )
)
_ZONES = frozenset(TIMEZONES)
EPOCH_MAX = 1e10  # epoch seconds: the year 2286
ATTRIBUTE_TEXT_MAX = 1000
EXTRA_MAX_DEPTH = 8
EXTRA_MAX_BYTES = 8192


def _zone(value: str) -> str:
    if value not in _ZONES:
        shown = value if len(value) <= 64 else value[:64] + "…"
        raise ValueError(f"unknown IANA time zone {shown!r} (e.g. Europe/Berlin, UTC)")
    return value


# The check gives the reason; the enum tells clients the names (the tz database's).
TimeZone = Annotated[
    str,
    AfterValidator(_zone),
    Field(
        max_length=64,
        description="An IANA time zone name (the tz database's, e.g. Europe/Berlin)",
        json_schema_extra={"enum": list(TIMEZONES)},
    ),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Epoch = Annotated[
    float,
    Field(ge=0, lt=EPOCH_MAX, allow_inf_nan=False, description="Epoch seconds, before 2286"),
]


def _attribute(value: Any) -> str | int | float | bool:
    """A profile attribute: text (at most ATTRIBUTE_TEXT_MAX characters), a finite number
    or a boolean — what a segment's `attr` compares, and what JSON round-trips."""
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number (JSON has no NaN or Infinity)")
        return value
    if isinstance(value, str):
        if len(value) > ATTRIBUTE_TEXT_MAX:
            raise ValueError(f"longer than {ATTRIBUTE_TEXT_MAX} characters")
        return value
    raise ValueError("must be a string, a finite number or a boolean")


AttributeValue = Annotated[
    StrictStr | StrictInt | FiniteFloat | StrictBool,
    PlainValidator(
        _attribute,
        json_schema_input_type=Annotated[str, Field(max_length=ATTRIBUTE_TEXT_MAX)]
        | int
        | FiniteFloat
        | bool,
    ),
]
AttributeName = Annotated[str, Field(min_length=1, max_length=128)]
VariableValue = Annotated[
    StrictStr | StrictInt | FiniteFloat,
    Field(description="A string or a finite number"),
]


def extra_problems(extra: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(field, reason) for extra fields that are too deep, not finite, or together too
    big as JSON. Iterative, so a 10,000-deep value is measured, not a recursion error."""
    if not extra:
        return []
    problems = []
    for name, value in extra.items():
        depth = _depth(value)
        if depth > EXTRA_MAX_DEPTH:
            problems.append((name, f"nested more than {EXTRA_MAX_DEPTH} levels deep"))
            continue
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            problems.append((name, "must hold finite numbers only (no NaN or Infinity)"))
    if problems:
        return problems
    total = len(json.dumps(dict(extra), ensure_ascii=False).encode())
    if total > EXTRA_MAX_BYTES:
        sizes = {name: len(json.dumps(v, ensure_ascii=False).encode()) for name, v in extra.items()}
        largest = max(sizes, key=sizes.__getitem__)
        return [
            (
                largest,
                f"extra fields make {total} bytes as JSON, this one {sizes[largest]}; at most "
                f"{EXTRA_MAX_BYTES} together",
            )
        ]
    return []


def _depth(value: Any) -> int:
    """Levels of arrays and objects in `value` (a scalar is 0, `[1]` is 1)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > EXTRA_MAX_DEPTH:
                return level  # enough to refuse; no need to walk the rest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level) for child in children)
    return deepest


def check_extra(title: str, extra: Mapping[str, Any] | None) -> None:
    """Raise a ValidationError located at each bad extra field (`extra_problems`): in a
    model validator, pydantic puts the event's location in front (`events[2].details`)."""
    if problems := extra_problems(extra):
        raise_at(title, [((name,), reason) for name, reason in problems])


def raise_at(title: str, errors: list[tuple[tuple[str | int, ...], str]]) -> None:
    """A ValidationError carrying each (location, reason), the reason as given."""
    template_model.raise_at(title, errors, kind="value_error")
