"""The template model: what a shop may store as a template, checked once when it is put,
so that nothing downstream ever renders a placeholder it cannot fill or a push a provider
would refuse.

A template declares its variables (name → type, and a `max_length` for text) and, per
locale, the content of one notification. Placeholders are `{name}`; `{{` and `}}` are a
literal brace (as in Python's `str.format`). Validation errors are pydantic errors whose
location names the offending part — `locales.fr.body`, `variables.order_id.max_length`,
`locales.fr_FR` — so the API answers 422 with `fields: [{field, reason}]` without knowing
templates (`pipelines.templates.field_errors` joins the location with dots).

The payload check renders every locale with each variable at its worst case — a string at
`max_length` characters of 4 UTF-8 bytes each (control characters are refused at send time,
so no character escapes to more), a URL at `max_length` ASCII characters, a number at its
longest text — into the APNs payload and the FCM message Herald sends (`apns_payload`,
`fcm_message`: the shapes the senders are to build), plus `HERALD_DATA_BYTES` for Herald's
own data keys, and refuses a locale over `PAYLOAD_LIMIT_BYTES` for either provider.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipelines.text_rules import (
    DEEPLINK_DESCRIPTION,
    Deeplink,
    ImageUrl,
    MultiLine,
    SingleLine,
)
from pipelines.whole_numbers import WholeNumber

TEMPLATE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VARIABLE_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,31}$"
# BCP-47-like, in canonical case: language, optional Script, optional region (or UN M.49).
LOCALE_PATTERN = r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?$"
VariableType = Literal["string", "integer", "number", "money", "url"]
# `max_length` when a text variable declares none (characters).
DEFAULT_MAX_LENGTH: dict[str, int] = {"string": 64, "url": 256}
# Numbers past this are refused at send time: their text stays short and money's cents fit.
NUMBER_MAX = 1e15
PAYLOAD_LIMIT_BYTES = 4096  # APNs: the whole JSON payload; FCM: the message content
HERALD_DATA_BYTES = 400  # notification_id, type and ids Herald adds (as api.schemas reserves)
PREFERENCE_CATEGORIES = ("order", "price_alert", "marketing")
PUSH_FIELDS = (
    "title", "body", "subtitle", "image_url", "deeplink", "sound", "badge", "thread_id",
    "category",
)  # fmt: skip
EMAIL_FIELDS = ("subject", "html", "text")
TEXT_FIELDS = tuple(f for f in (*PUSH_FIELDS, *EMAIL_FIELDS) if f != "badge")

_LOCALE = re.compile(LOCALE_PATTERN)
_VARIABLE = re.compile(VARIABLE_NAME_PATTERN)
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # text_rules' set
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[!#-\[\]-~]+$")  # printable ASCII, no space " \
# The longest text each non-text type renders to (see template_render's formatting).
_WORST_TEXT = {"integer": "-" + "9" * 19, "number": "-" + "9" * 23, "money": "-" + "9" * 18}


class TemplateSyntaxError(ValueError):
    """A content string whose braces do not parse (the message says where)."""


class Piece(NamedTuple):
    """A literal run of text, or (`variable`) the name of a placeholder."""

    text: str
    variable: bool


@functools.lru_cache(maxsize=8192)
def pieces(text: str) -> tuple[Piece, ...]:
    """`text` split into literal runs and placeholders; cached, since every render of a
    (template, locale) needs them and the same strings come back batch after batch."""
    out: list[Piece] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        token, name = match.group(0), match.group(1)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif name is not None:
            if not _VARIABLE.match(name):
                raise TemplateSyntaxError(
                    f"'{{{name}}}' at character {match.start()} is not a variable name "
                    "(a-z, 0-9 and _, not starting with a digit); write '{{' for a literal brace"
                )
            if "".join(literal):
                out.append(Piece("".join(literal), False))
            literal = []
            out.append(Piece(name, True))
        else:
            raise TemplateSyntaxError(
                f"unbalanced '{token}' at character {match.start()}; "
                f"write '{token * 2}' for a literal brace"
            )
    literal.append(text[position:])
    if "".join(literal):
        out.append(Piece("".join(literal), False))
    return tuple(out)


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with its placeholders filled from `values` (one string; the payload check and
    tests use it — notifications are rendered in columns by `template_render`)."""
    return "".join(values[p.text] if p.variable else p.text for p in pieces(text))


class Variable(BaseModel):
    """A declared variable: what a sender must supply, and how long its text can get."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: VariableType = Field("string", description="string, integer, number, money or url")
    max_length: WholeNumber | None = Field(
        None, ge=1, le=2000, description="Most characters (string and url only); default 64/256"
    )

    @model_validator(mode="after")
    def _length_is_for_text(self) -> Variable:
        if self.max_length is not None and self.type not in DEFAULT_MAX_LENGTH:
            raise_at("Variable", [(("max_length",), "only string and url variables have one")])
        return self

    @property
    def limit(self) -> int | None:
        """The effective maximum length in characters (None: not a text variable)."""
        return self.max_length or DEFAULT_MAX_LENGTH.get(self.type)


def _text(limit: int, **schema: Any) -> Any:
    return Field(None, min_length=1, max_length=limit, **schema)


class Content(BaseModel):
    """One locale's content. Every text field may hold placeholders; `badge` is a number.
    `category` here is the APNs category / Android click action (the template's own
    `category` is the preference category)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: SingleLine = Field(min_length=1, max_length=1024)
    body: MultiLine = Field(min_length=1, max_length=4096)
    subtitle: SingleLine | None = _text(1024)
    image_url: ImageUrl | None = _text(2048)
    deeplink: Deeplink | None = _text(2048, description=DEEPLINK_DESCRIPTION)
    sound: SingleLine | None = _text(256)
    badge: WholeNumber | None = Field(None, ge=0, le=999_999)
    thread_id: SingleLine | None = _text(256)
    category: SingleLine | None = _text(256)
    subject: SingleLine | None = _text(998)  # email; RFC 5322's line limit
    html: MultiLine | None = _text(200_000)
    text: MultiLine | None = _text(100_000)


class Template(BaseModel):
    """A template as a shop puts it (`version` is the store's: 0 for a shipped default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template_id: str = Field(pattern=TEMPLATE_ID_PATTERN)
    category: Literal[PREFERENCE_CATEGORIES] | None = Field(  # type: ignore[valid-type]
        None, description="The user preference category the notification obeys"
    )
    variables: dict[str, Variable] = Field(default_factory=dict, max_length=32)
    locales: dict[str, Content] = Field(min_length=1, max_length=200)
    version: int = Field(0, ge=0, description="Set by the store on every put")
    ttl_s: WholeNumber | None = Field(
        None,
        ge=0,
        le=28 * 24 * 3600,
        description="Default time to live of its pushes (apns-expiration, android.ttl), 0 to "
        "28 days: an event's own ttl_s wins; unset, the kind's default (HERALD_*_TTL_S)",
    )
    priority: Literal["high", "normal"] | None = Field(
        None, description="Default priority of its pushes; an event's own priority wins"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Template:
        errors = [
            (("variables", name), "must be a-z, 0-9 and _, at most 32, not starting with a digit")
            for name in self.variables
            if not _VARIABLE.match(name)
        ]
        for tag, content in self.locales.items():
            errors += locale_errors(tag, content, self.variables)
        if errors:
            raise_at("Template", errors)
        return self


def locale_errors(
    tag: str, content: Content, variables: Mapping[str, Variable]
) -> list[tuple[tuple[str, ...], str]]:
    """(location, reason) of everything wrong with one locale: its tag, each field's braces
    and variables, then — only when those are right — the provider payload size."""
    if not _LOCALE.match(tag):
        return [(("locales", tag), "locale tag must look like en, pt-BR, zh-Hant or es-419")]
    errors = []
    for field in TEXT_FIELDS:
        text = getattr(content, field)
        if text is None:
            continue
        try:
            used = [p.text for p in pieces(text) if p.variable]
        except TemplateSyntaxError as error:
            errors.append((("locales", tag, field), str(error)))
            continue
        errors += [
            (("locales", tag, field), f"uses {{{name}}}, which the template does not declare")
            for name in dict.fromkeys(used)
            if name not in variables
        ]
    if not errors:
        errors += _size_errors(tag, content, variables)
    return errors


def worst_case(content: Content, variables: Mapping[str, Variable]) -> dict[str, Any]:
    """The content rendered with every variable at its longest (see the module doc)."""
    values = {}
    for name, variable in variables.items():
        if variable.type == "string":
            values[name] = "\U0001f600" * (variable.limit or 0)  # 4 UTF-8 bytes each
        elif variable.type == "url":
            values[name] = "a" * (variable.limit or 0)
        else:
            values[name] = _WORST_TEXT[variable.type]
    rendered: dict[str, Any] = {f: getattr(content, f) for f in (*PUSH_FIELDS, *EMAIL_FIELDS)}
    for field in TEXT_FIELDS:
        if rendered[field] is not None:
            rendered[field] = substitute(rendered[field], values)
    return rendered


def apns_payload(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The APNs payload of rendered push fields (`aps` plus the app's keys)."""
    alert = {k: fields[k] for k in ("title", "subtitle", "body") if fields.get(k) is not None}
    aps: dict[str, Any] = {"alert": alert, "sound": fields.get("sound") or "default"}
    for key, field in (("badge", "badge"), ("thread-id", "thread_id"), ("category", "category")):
        if fields.get(field) is not None:
            aps[key] = fields[field]
    if fields.get("image_url") is not None:
        aps["mutable-content"] = 1  # the app's service extension fetches the image
    extra = {k: fields[k] for k in ("deeplink", "image_url") if fields.get(k) is not None}
    return {"aps": aps, **extra}


def fcm_message(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The FCM v1 message content of rendered push fields (no token, no Herald data)."""
    notification = {k: fields[k] for k in ("title", "body") if fields.get(k) is not None}
    if fields.get("image_url") is not None:
        notification["image"] = fields["image_url"]
    android = {
        key: fields[field]
        for key, field in (("sound", "sound"), ("tag", "thread_id"), ("click_action", "category"))
        if fields.get(field) is not None
    }
    if fields.get("badge") is not None:
        android["notification_count"] = fields["badge"]
    data = {k: fields[k] for k in ("deeplink", "subtitle") if fields.get(k) is not None}
    return {"notification": notification, "data": data, "android": {"notification": android}}


def payload_bytes(fields: Mapping[str, Any]) -> dict[str, int]:
    """Bytes each provider is sent for rendered push fields, Herald's data included
    (JSON as the client libraries write it: non-ASCII raw, default separators)."""
    return {
        provider: len(json.dumps(build(fields), ensure_ascii=False).encode()) + HERALD_DATA_BYTES
        for provider, build in (("apns", apns_payload), ("fcm", fcm_message))
    }


def _size_errors(
    tag: str, content: Content, variables: Mapping[str, Variable]
) -> list[tuple[tuple[str, ...], str]]:
    """One error, on the push field that weighs most, when the worst case is too big."""
    rendered = worst_case(content, variables)
    sizes = payload_bytes(rendered)
    provider, size = max(sizes.items(), key=lambda item: item[1])
    if size <= PAYLOAD_LIMIT_BYTES:
        return []
    weights = {f: len(str(rendered[f]).encode()) for f in PUSH_FIELDS if rendered[f] is not None}
    field = max(weights, key=weights.__getitem__)
    reason = (
        f"with every variable at its max length this locale's push is up to {size} bytes "
        f"for {provider.upper()} (Herald's own data included), over the providers' "
        f"{PAYLOAD_LIMIT_BYTES}: shorten {field} or lower its variables' max_length"
    )
    return [(("locales", tag, field), reason)]


def raise_at(
    title: str, errors: list[tuple[tuple[str | int, ...], str]], kind: str = "template"
) -> None:
    """A ValidationError carrying each (location, reason), the reason as given: nested in
    a model, pydantic puts the parent's location in front, as for any field error."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError(kind, "{reason}", {"reason": reason}),
            loc=loc,
            input=None,
        )
        for loc, reason in errors
    ]
    raise ValidationError.from_exception_data(title, details)


def validate_variables(template: Template, variables: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, reason) for every variable a send supplies wrongly: a declared one missing
    or null, of the wrong type, too long, or one the template does not declare. Empty: the
    variables render every locale without a hole."""
    problems = []
    for name, variable in template.variables.items():
        value = variables.get(name)
        if value is None:
            problems.append((name, "missing"))
        elif (reason := _check(variable, value)) is not None:
            problems.append((name, reason))
    problems += [
        (name, f"not a variable of template {template.template_id}")
        for name in variables
        if name not in template.variables
    ]
    return problems


def _check(variable: Variable, value: Any) -> str | None:
    """Why `value` does not fit `variable`, or None."""
    kind = variable.type
    if kind in ("string", "url"):
        if not isinstance(value, str):
            return f"must be a {kind}"
        if len(value) > (variable.limit or 0):
            return f"longer than {variable.limit} characters"
        if _CONTROL.search(value):
            return "must not contain control characters"
        if kind == "url" and not _URL.match(value):
            return "must be a URL: a scheme, ':', then printable ASCII without spaces"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be {'an integer' if kind == 'integer' else 'a number'}"
    if kind == "integer" and not isinstance(value, int):
        return "must be an integer"
    if not math.isfinite(value) or abs(value) >= NUMBER_MAX:
        return f"must be finite and below {NUMBER_MAX:.0e} in size"
    return None
