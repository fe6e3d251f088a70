"""JSON as Herald writes it to Redis: finite numbers only.

Python's `json.dumps` writes NaN and Infinity by default, which no other JSON parser
reads and which polars cannot infer a type from: one such number in a stored row once
made every later campaign fail. The door refuses them (`api.input_rules`), so this is the
second line for the rows Herald builds itself — retries, dead letters, plans, audit
records. A non-finite number that still gets here (a model's score, say) is written as
null with a warning, rather than failing the write: a retry or a dead letter that cannot
be written is a lost delivery, a null is not.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

log = logging.getLogger(__name__)


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps(value, **options)` with `allow_nan=False`; non-finite floats as null."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        log.warning("a non-finite number in a row written as null")
        return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
