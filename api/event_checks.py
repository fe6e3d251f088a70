"""The door's check of events against the templates: whether each event's content can be
rendered whole, before it is logged — a router must never render a hole, and a provider
must never refuse a push for its size.

Pure functions over parsed events (`api.events`) and the templates in force (the shop's
over the shipped ones, as `TemplateCache.templates()` gives them); `TemplateBook.problems`
runs them with a fresh-enough cache, for `POST /v1/events` and the Kafka ingestor alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from api.events import AnyEvent, NotificationRequested, OrderUpdated, data_bytes
from pipelines.template_model import (
    PAYLOAD_LIMIT_BYTES,
    PUSH_FIELDS,
    VARIABLE_NAME_PATTERN,
    Template,
    TemplateSyntaxError,
    Variable,
    payload_bytes,
    pieces,
    substitute,
    validate_variables,
)
from pipelines.text_rules import deeplink_problem

INLINE_TEXT_MAX = 2000  # characters of an inline content's string variable
_VARIABLE = re.compile(VARIABLE_NAME_PATTERN)
_PUSH_TEXT_FIELDS = tuple(f for f in PUSH_FIELDS if f != "badge")
# (event index, field within the event, reason): `events[i].<field>` over HTTP.
Problem = tuple[int, str, str]


def template_problems(
    events: Sequence[AnyEvent], templates: Mapping[str, Template]
) -> list[Problem]:
    """Every reason an event's content could not be rendered whole: an unknown template,
    a variable missing, mistyped, too long or undeclared, inline placeholders without a
    value, a push over the providers' size once filled. Empty: every event renders.

    `templates` is every template in force (the shop's over the shipped ones, as
    `TemplateCache.templates()` gives them). Price drops use the shipped `price_drop`
    variables, which their contract already guarantees."""
    problems: list[Problem] = []
    for i, event in enumerate(events):
        if isinstance(event, NotificationRequested):
            found = _requested(event, templates)
        elif isinstance(event, OrderUpdated):
            found = _order_update(event, templates)
        else:
            continue
        problems += [(i, field, reason) for field, reason in found]
    return problems


def deeplink_problems(events: Sequence[AnyEvent], schemes: Sequence[str]) -> list[Problem]:
    """Inline content whose deeplink is not of the deployment's schemes (a template's
    deeplink was checked when it was put)."""
    problems: list[Problem] = []
    for i, event in enumerate(events):
        link = getattr(getattr(event, "content", None), "deeplink", None)
        if link is not None and (reason := deeplink_problem(link, schemes)) is not None:
            problems.append((i, "content.deeplink", reason))
    return problems


def _unknown(template_id: str) -> list[tuple[str, str]]:
    return [("template_id", f"no template {template_id!r}: neither the shop's nor a shipped one")]


def _order_update(event: OrderUpdated, templates: Mapping[str, Template]) -> list[tuple[str, str]]:
    """An order's template variables come from its own fields of the same name."""
    template_id = event.template_of()
    template = templates.get(template_id)
    if template is None:
        return _unknown(template_id)
    fields = {**vars(event), **(event.model_extra or {})}
    values = {name: fields.get(name) for name in template.variables}
    return [
        (name, f"{reason} (a variable of template {template_id})")
        for name, reason in validate_variables(template, values)
    ]


def _requested(
    event: NotificationRequested, templates: Mapping[str, Template]
) -> list[tuple[str, str]]:
    if event.template_id is None:
        return _inline(event)
    template = templates.get(event.template_id)
    if template is None:
        return _unknown(event.template_id)
    found = [(f"variables.{n}", r) for n, r in validate_variables(template, event.variables)]
    if not found and event.data:  # the template's size check at put time kept no room for data
        found = _size_problems(template.locales, event.variables, event.data, "data")
    return found


def _inline(event: NotificationRequested) -> list[tuple[str, str]]:
    """Inline content as a template whose variables are the ones supplied, each of the
    type of its value: placeholders need a value, values must be strings (at most
    `INLINE_TEXT_MAX` characters, no control characters) or numbers."""
    found, declared = [], {}
    for name, value in event.variables.items():
        if not _VARIABLE.fullmatch(name):
            found.append((f"variables.{name}", "not a variable name: a-z, 0-9 and _, at most 32"))
        elif isinstance(value, str):
            declared[name] = Variable(type="string", max_length=INLINE_TEXT_MAX)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            declared[name] = Variable(type="integer" if isinstance(value, int) else "number")
        else:
            found.append((f"variables.{name}", "must be a string or a number"))
    as_template = Template.model_construct(template_id="inline", variables=declared, locales={})
    values = {name: event.variables[name] for name in declared}
    found += [(f"variables.{n}", r) for n, r in validate_variables(as_template, values)]
    missing: dict[str, None] = {}
    for field in _PUSH_TEXT_FIELDS:
        text = getattr(event.content, field)
        try:
            used = [p.text for p in pieces(text) if p.variable] if text is not None else []
        except TemplateSyntaxError as error:
            found.append((f"content.{field}", str(error)))
            continue
        missing.update((name, None) for name in used if name not in event.variables)
    found += [(f"variables.{name}", "missing") for name in missing]
    if not found:
        found = _size_problems({"": event.content}, event.variables, event.data, "content")
    return found


def _size_problems(
    locales: Mapping[str, Any],
    values: Mapping[str, Any],
    data: Mapping[str, str] | None,
    field: str,
) -> list[tuple[str, str]]:
    """The push of each locale filled with `values` (numbers at their longest text) and
    `data`, against the providers' limit; one problem, on `field`, for the first too big."""
    texts = {name: _longest_text(value) for name, value in values.items()}
    for tag, content in locales.items():
        rendered = {f: getattr(content, f) for f in PUSH_FIELDS}
        for f in _PUSH_TEXT_FIELDS:
            if rendered[f] is not None:
                rendered[f] = substitute(rendered[f], texts)
        size = max(payload_bytes(rendered).values()) + data_bytes(data)
        if size > PAYLOAD_LIMIT_BYTES:
            where = f" in locale {tag}" if tag else ""
            return [
                (
                    field,
                    f"filled with these variables{' and data' if data else ''} the push is "
                    f"{size} bytes{where} (Herald's own data included), over the providers' "
                    f"{PAYLOAD_LIMIT_BYTES}",
                )
            ]
    return []


def _longest_text(value: Any) -> str:
    """A value as the longest text rendering could make of it (money: two decimals)."""
    if isinstance(value, str):
        return value
    return max(str(value), f"{value:.2f}", key=len)
