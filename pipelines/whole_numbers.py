"""An integer field as JSON Schema states it: `{"type": "integer"}` holds 58 and 58.0 (a
number with no fractional part), never `true` or 58.5.

pydantic's `StrictInt` refuses 58.0, which the OpenAPI document promises, so a client
generated from it (or a JavaScript one: JSON numbers have no integer type) was refused;
its lax `int` takes `false` as 0, which the door must refuse. `WholeNumber` is between
the two: booleans refused with their reason, whole floats taken as ints, anything else
left to `StrictInt`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, StrictInt


def _whole(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[StrictInt, BeforeValidator(_whole)]
