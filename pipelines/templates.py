"""Templates as data: what a notification says, per template and locale, owned by the shop.

This is the surface the API, the routers and the senders call; the internals sit beside it
(`template_model`: the pydantic model and its checks; `template_render`: columnar
rendering and locale resolution; `default_templates`: what Herald ships).

- **At the door** (`PUT /v1/templates/{id}`): `parse(body)` validates a template — ids,
  variable declarations, locale tags, braces, undeclared placeholders, provider payload
  size at worst case — raising a pydantic `ValidationError` whose locations name the part
  (`locales.fr.body`); `field_errors(error)` turns it into the API's `[{field, reason}]`.
  Then `cluster.state.templates.TemplateStore.put(template.model_dump())` → version.
- **At send time** (`notification.requested`): `validate_variables(template, variables)`
  lists (name, reason) for each missing, wrongly typed, too long or undeclared variable.
- **In a router**: `cache(store)` holds every template (shop's over `defaults()`);
  `resolve_locales(frame, available_locales(templates), settings.content.default_locale)`
  gives each notification its locale, `render(frame, templates)` its content columns
  (`title`, `body`, ..., `template_version`, which the delivery record should keep).
- **In a sender**: `apns_payload` / `fcm_message` build the provider payload from the
  rendered fields — the same shapes the size check measured.

The model lives here, not in `cluster/`, because it is content logic (placeholders, payload
shapes, formatting) that only pipelines and the layers above need; the store below speaks
plain JSON-shaped dicts and the cache is handed the parser and the defaults as arguments,
so `cluster/` never imports `pipelines/`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from cluster.state.templates import TemplateCache, TemplateStore
from pipelines.default_templates import DEFAULTS
from pipelines.template_model import (
    EMAIL_FIELDS,
    PAYLOAD_LIMIT_BYTES,
    PUSH_FIELDS,
    Content,
    Template,
    TemplateSyntaxError,
    Variable,
    apns_payload,
    fcm_message,
    payload_bytes,
    pieces,
    validate_variables,
)
from pipelines.template_render import (
    OUTPUT_SCHEMA,
    available_locales,
    decimal_separator,
    render,
    resolve_locales,
)

__all__ = [
    "EMAIL_FIELDS",
    "OUTPUT_SCHEMA",
    "PAYLOAD_LIMIT_BYTES",
    "PUSH_FIELDS",
    "Content",
    "Template",
    "TemplateSyntaxError",
    "Variable",
    "apns_payload",
    "available_locales",
    "cache",
    "decimal_separator",
    "defaults",
    "fcm_message",
    "field_errors",
    "parse",
    "payload_bytes",
    "pieces",
    "render",
    "resolve_locales",
    "validate_variables",
]


def parse(data: Mapping[str, Any]) -> Template:
    """A validated template from JSON-shaped data (a request body, a stored dict)."""
    return Template.model_validate(data)


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """The API's `fields` of a template's validation error: the location joined with dots
    (`locales.fr.body`, `variables.order_id.max_length`) and the reason."""
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "reason": e["msg"]}
        for e in error.errors()
    ]


@functools.cache
def defaults() -> dict[str, Template]:
    """The shipped templates, parsed once (a shop's template of the same id replaces one)."""
    return {template_id: parse(data) for template_id, data in DEFAULTS.items()}


def cache(store: TemplateStore, *, max_age_s: float = 1.0) -> TemplateCache[Template]:
    """A router's template cache: the shop's templates over the shipped defaults, parsed."""
    return TemplateCache(store, defaults=DEFAULTS, parse=parse, max_age_s=max_age_s)
