"""The templates API (`/v1/templates`, admin scope) and the templates the door checks
events against, behind one object per ingress replica (`TemplateBook`).

A template's body is validated by `pipelines.templates.parse` — the one model every layer
renders with — not by FastAPI: its errors are located in the template's own terms
(`locales.fr.body`, `variables.order_id.max_length`) by `field_errors`, and a locale tag or
variable name is a dict key a generic path would mangle. FastAPI only decodes the body as
a JSON object (after the key check, as on every route); `TemplateIn` documents it in
OpenAPI (`TEMPLATE_PUT`).

Reads answer from the store, so an admin sees a put at once on every replica; the door's
checks read a `TemplateCache`, fresh to within a second (one GET of the generation), and
refresh it before refusing anything (`TemplateBook.problems`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import invalid, not_found
from api.event_checks import Problem, deeplink_problems, template_problems
from api.events import AnyEvent
from cluster.settings import HeraldSettings
from cluster.state.templates import TemplateStore
from pipelines import templates
from pipelines.template_model import (
    LOCALE_PATTERN,
    PAYLOAD_LIMIT_BYTES,
    PREFERENCE_CATEGORIES,
    TEMPLATE_ID_PATTERN,
    VARIABLE_NAME_PATTERN,
    Content,
    Template,
    Variable,
)
from pipelines.text_rules import DEFAULT_DEEPLINK_SCHEMES, deeplink_problem


class TemplateIn(BaseModel):
    """A template as a shop puts it: per locale, the content of one notification, with
    `{name}` placeholders of declared variables (`{{` and `}}` are literal braces)."""

    model_config = ConfigDict(extra="forbid")

    template_id: str | None = Field(
        None, pattern=TEMPLATE_ID_PATTERN, description="Optional; when given, the path's id"
    )
    category: Literal[PREFERENCE_CATEGORIES] | None = Field(  # type: ignore[valid-type]
        None,
        description="The preference category the notification obeys (order, price_alert, "
        "marketing): a user who turned it off is not sent it",
    )
    variables: dict[str, Variable] = Field(
        default_factory=dict,
        max_length=32,
        description="name → declaration; at most 32. Names: a–z 0–9 _, at most 32, not "
        f"starting with a digit ({VARIABLE_NAME_PATTERN}). Types: `string` and `url` (text of "
        "at most `max_length` characters — default 64 and 256, at most 2,000 — without control "
        "characters; a url is a scheme, ':', then printable ASCII without spaces), `integer`, "
        "`number`, `money` (finite, below 1e15; money renders with two decimals and the "
        "locale's decimal separator). Every send must supply each declared variable, and only "
        "those.",
    )
    locales: dict[str, Content] = Field(
        min_length=1,
        max_length=200,
        description="locale tag → content; 1–200 locales. Tags in canonical case: language, "
        "optional Script, optional REGION or UN M.49 area — en, pt-BR, zh-Hant, es-419 "
        f"({LOCALE_PATTERN}). Every placeholder must be a declared variable. Rendered with "
        "every variable at its longest (text at `max_length` characters of 4 UTF-8 bytes, "
        "numbers at their longest), each locale's push must fit "
        f"{PAYLOAD_LIMIT_BYTES:,} bytes both as an APNs payload and as an FCM message, 400 of "
        "them kept for Herald's own data.",
    )


class TemplateOut(TemplateIn):
    template_id: str
    version: int = Field(description="1, 2, … per put of this id, never reused; 0: shipped")
    source: Literal["shop", "default"] = Field(
        description="`shop`: put through this API; `default`: shipped with Herald"
    )


class TemplateList(BaseModel):
    templates: list[TemplateOut] = Field(
        description="Every template in force, by id: the shop's, and the shipped ones the "
        "shop has not replaced"
    )


def _inlined(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` written in place: an OpenAPI operation's
    schema cannot point into a `$defs` of its own."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)


# The PUT route's OpenAPI: the body it takes is a `TemplateIn`; it answers 201 or 200.
TEMPLATE_PUT: dict[str, Any] = {
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inlined(TemplateIn)}},
        }
    },
    "responses": {
        200: {"model": TemplateOut, "description": "Replaced the shop's template of this id"}
    },
}


def parse_template(
    template_id: str, body: Mapping[str, Any], deeplink_schemes: Sequence[str]
) -> Template:
    """The template a PUT body describes, or a 422 naming every problem. The path gives
    the id; the store gives the version; every locale's deeplink starts with one of the
    deployment's `deeplink_schemes`, written out (placeholders only after it)."""
    fields = []
    if "version" in body:
        fields.append({"field": "version", "reason": "set by Herald on every put; leave it out"})
    if body.get("template_id", template_id) != template_id:
        fields.append({"field": "template_id", "reason": f"must be the path's, {template_id!r}"})
    data = {k: v for k, v in body.items() if k != "version"}
    try:
        template = templates.parse({**data, "template_id": template_id})
    except ValidationError as error:
        fields += templates.field_errors(error)
    else:
        for tag, content in template.locales.items():
            if content.deeplink is None:
                continue
            if (reason := deeplink_problem(content.deeplink, deeplink_schemes)) is not None:
                fields.append({"field": f"locales.{tag}.deeplink", "reason": reason})
    if fields:
        raise invalid(fields)
    return template


def template_out(template: Template) -> TemplateOut:
    """The API's view of a template in force: a version above 0 is the shop's."""
    return TemplateOut(
        template_id=template.template_id,
        category=template.category,
        variables=dict(template.variables),
        locales=dict(template.locales),
        version=template.version,
        source="shop" if template.version else "default",
    )


class TemplateBook:
    """The shop's templates (a `TemplateStore`) and the cache the door checks events with;
    one per ingress replica or Kafka ingestor, on its async Redis client. Deeplinks are
    checked against the deployment's schemes (`settings.protection.deeplink_schemes`)."""

    deeplink_schemes: tuple[str, ...] = DEFAULT_DEEPLINK_SCHEMES

    def __init__(self, settings: HeraldSettings, redis: aioredis.Redis) -> None:
        self.store = TemplateStore(settings, redis)
        self.cache = templates.cache(self.store)
        self.deeplink_schemes = tuple(settings.protection.deeplink_schemes)

    async def put(self, template: Template) -> tuple[TemplateOut, bool]:
        """Store `template`; (it with its new version, True when no shop template of its id
        was in force before)."""
        previous = await self.store.get(template.template_id)
        version = await self.store.put(template.model_dump(mode="json", exclude_none=True))
        await self.cache.refresh()  # this replica's door knows it at once
        return template_out(template.model_copy(update={"version": version})), previous is None

    async def get(self, template_id: str) -> TemplateOut:
        stored = await self.store.get(template_id)
        template = templates.parse(stored) if stored else templates.defaults().get(template_id)
        if template is None:
            raise not_found(
                "template", template_id, "template_id", "neither the shop's nor shipped"
            )
        return template_out(template)

    async def listing(self) -> TemplateList:
        in_force = await self.cache.refresh()
        return TemplateList(templates=[template_out(in_force[i]) for i in sorted(in_force)])

    async def delete(self, template_id: str) -> None:
        """Remove the shop's template; a shipped one of the same id applies again."""
        if not await self.store.delete(template_id):
            raise not_found("template", template_id, "template_id", "the shop has no such template")
        await self.cache.refresh()

    async def problems(self, events: Sequence[AnyEvent]) -> list[Problem]:
        """`api.event_checks.template_problems` against the templates in force. Nothing is
        refused on a stale cache: when there are problems and the store changed since the
        cache loaded, it reloads and looks again (one GET more, for refused batches only)."""
        found = template_problems(events, await self.cache.templates())
        if found and await self.store.generation() != self.cache.generation:
            found = template_problems(events, await self.cache.refresh())
        return found + deeplink_problems(events, self.deeplink_schemes)

    async def check(self, events: Sequence[AnyEvent]) -> None:
        """422 naming `events[i].<field>` for every problem of every event, or nothing."""
        if found := await self.problems(events):
            raise invalid([{"field": f"events[{i}].{f}", "reason": r} for i, f, r in found])

    async def check_campaign(self, campaign: Mapping[str, Any]) -> None:
        """422 naming `variants[i].template_id` / `variants[i].variables.<name>` for a variant
        whose template is not in force or whose variables do not fill it, and
        `variants[i].deeplink` for a link of a scheme the deployment does not allow:
        refused at the door rather than a campaign marked failed once it runs."""
        in_force = await self.cache.templates()
        fields = []
        for i, variant in enumerate(campaign["variants"]):
            link = variant.get("deeplink")
            if link and (reason := deeplink_problem(link, self.deeplink_schemes)) is not None:
                fields.append({"field": f"variants[{i}].deeplink", "reason": reason})
            template_id = variant.get("template_id")
            if template_id is None:
                continue
            template = in_force.get(template_id)
            if template is None:
                reason = f"no template {template_id!r}: neither the shop's nor a shipped one"
                fields.append({"field": f"variants[{i}].template_id", "reason": reason})
                continue
            given = variant.get("variables") or {}
            fields += [
                {"field": f"variants[{i}].variables.{name}", "reason": reason}
                for name, reason in templates.validate_variables(template, given)
            ]
        if fields:
            raise invalid(fields)
