"""Herald's Serve entry point: the FastAPI ingress and the typed application builder.

    serve run serve_app:app                        # settings from HERALD_* variables
    serve run serve_app:app_builder shards=8       # any HeraldSettings field as an arg

The ingress validates at the door, writes events to the durable log before answering 202,
and talks to the shards for device and user writes. Everything after the log (routing,
sending, status) happens in Herald's actors.

Routes stay thin: the scope they need (a dependency, checked before the body), a call to a
store (`cluster.state`) or an actor (`api.fleet`), an answer (`api.schemas`). They never
talk to Redis themselves.
"""

import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Query, Response
from ray import serve
from ray.serve import Application

from actors.bootstrap import ensure_actors
from actors.fanout_pool import running_fanout_workers
from actors.sender_pool import running_sender_replicas
from actors.stream_gateway import keep_gateways
from api.auth import check_keys_before_json, require
from api.campaign_door import accept_campaign
from api.credentials import credentials_router, refuse_insecure_defaults
from api.demo import demo_router
from api.devices import devices_router
from api.erasure import Erasure, erasure_router
from api.errors import BodySizeLimit, install_error_handlers, not_found
from api.events import EventsAccepted, EventsIn, log_entries
from api.fleet import Fleet
from api.header_timeout import keep_installed
from api.me import Me, me_router
from api.models import ModelControl
from api.paths import (
    CampaignId,
    DeviceId,
    ModelVersion,
    NotificationId,
    TemplateBody,
    TemplateId,
    UserId,
)
from api.responses import CAMPAIGN_POST, DEVICE_POST, ERRORS, READYZ, Readiness, document
from api.rows import preferences_row, profile_row, wishlist_rows
from api.schemas import (
    CampaignAccepted,
    CampaignIn,
    CampaignStatus,
    DeviceIn,
    DeviceOut,
    FeedbackAccepted,
    FeedbackIn,
    Inbox,
    ModelDeployed,
    ModelList,
    NotificationStatus,
    PreferencesIn,
    ProfileIn,
    WishlistIn,
    WishlistOut,
)
from api.slow_clients import BodyReadTimeout
from api.status import notification_status
from api.templates import (
    TEMPLATE_PUT,
    TemplateBook,
    TemplateList,
    TemplateOut,
    parse_template,
)
from api.user_actions import Users, record_feedback, register_device, unregister_device
from api.user_tokens import UserTokens
from cluster import metrics
from cluster.eventlog import open_event_log
from cluster.logs import configure_logging
from cluster.settings import ApiSettings, HeraldArgs, HeraldSettings, settings_from_args
from cluster.state.campaigns import CampaignStore
from cluster.state.clients import async_client, ping
from cluster.state.deliveries import DeliveryState
from cluster.state.devices import DeviceOwners
from cluster.state.feedback import FeedbackStore
from cluster.state.inbox import InboxStore
from cluster.vocabulary import LANES
from models.registry import Registry


# Names the routes use are defined above the class: `serve.ingress` pickles the FastAPI app
# when the class is defined, so they must exist by then.
def _replica() -> Any:
    """The ingress instance of the replica answering. Serve's replica context holds it (the
    lookup Serve itself makes to hand each route its `self`), so every replica checks keys
    and tokens against the settings it was built with."""
    return serve.get_replica_context().servable_object


def _api_keys() -> dict[str, list[str]]:
    return _replica().settings.api.api_keys


def _stream_target(settings: HeraldSettings) -> str:
    """Where pages open their stream: the public URL, else the gateway's port."""
    return settings.api.stream_public_url or str(settings.api.stream_port)


INGEST = [require("ingest", _api_keys)]
READ = [require("read", _api_keys)]
CAMPAIGNS = [require("campaigns", _api_keys)]
ADMIN = [require("admin", _api_keys)]
TEMPLATES = {"tags": ["templates"], "dependencies": ADMIN, "response_model_exclude_none": True}

api = FastAPI(
    title="Herald",
    version="1",
    summary="Personalized notification fan-out: events in, pushes, inbox and streams out.",
    responses=ERRORS,
)
install_error_handlers(api)
api.include_router(me_router(lambda: _replica().me, lambda: _replica().user_tokens))
api.include_router(demo_router(lambda: _stream_target(_replica().settings)))
api.include_router(credentials_router(lambda: _replica().fleet.reload_credentials(), ADMIN))
api.include_router(devices_router(lambda: _replica().users, _api_keys))
api.include_router(erasure_router(lambda: _replica().erasure, _api_keys))
document(api, "POST", "/v1/me/devices", DEVICE_POST)  # 200 for a known token, as below
check_keys_before_json(api)
# The ingress sets the real limit from its settings when a replica starts.
body_limit = BodySizeLimit.Limit(max_bytes=ApiSettings.model_fields["max_body_bytes"].default)
api.add_middleware(BodySizeLimit, limit=body_limit)
# Outermost: the size limit reads the body through it. Seconds set per replica, as above.
read_timeout = BodyReadTimeout.Limit(seconds=10.0)
api.add_middleware(BodyReadTimeout, limit=read_timeout)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.2},
    # Live streams are not Serve's: each node's stream gateway holds them
    # (`actors.stream_gateway`), so ongoing requests here are HTTP calls only.
    max_ongoing_requests=200,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 50},
)
@serve.ingress(api)
class HeraldIngress:
    def __init__(self, settings: HeraldSettings) -> None:
        configure_logging(settings)
        refuse_insecure_defaults(settings)
        self.settings = settings
        body_limit.max_bytes = settings.api.max_body_bytes
        read_timeout.seconds = settings.protection.http_read_timeout_s
        keep_installed(settings.protection.http_read_timeout_s)  # headers: in Serve's proxy
        self.redis = async_client(settings)
        self.events = open_event_log(settings, self.redis)
        self.state = DeliveryState(settings, self.redis)
        self.campaigns = CampaignStore(settings, self.redis)
        self.owners = DeviceOwners(settings, self.redis)
        self.feedback = FeedbackStore(settings, self.redis)
        self.inbox = InboxStore(settings, self.redis)
        self.user_tokens = UserTokens.from_settings(settings.api)
        self.templates = TemplateBook(settings, self.redis)
        ensure_actors(settings)
        keep_gateways(settings)  # the live streams: each node's gateway, off Serve's proxy
        self.fleet = Fleet(settings, running_fanout_workers, running_sender_replicas)
        self.models = ModelControl(
            Registry(settings.models_root), self.fleet.reload_fanout_workers, settings.feedback_root
        )
        self.users = Users(self.fleet, self.owners, self.state, self.feedback)
        self.me = Me(self.users, self.inbox)
        self.erasure = Erasure.build(settings, self.redis, self.fleet)

    # --- health --------------------------------------------------------------------------
    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"], responses=READYZ)
    async def readyz(self, response: Response) -> Readiness:
        """Ready when Redis answers and every shard, router, fan-out worker, sender and (with
        Kafka configured) the Kafka ingestor answers within 2 s."""
        redis_up, actors_up = await asyncio.gather(ping(self.redis), self.fleet.ready())
        checks = {"redis": redis_up, **actors_up}
        if not all(checks.values()):
            response.status_code = 503
        return Readiness(checks=checks)

    @api.get("/v1/admin/stats", tags=["admin"], dependencies=ADMIN)
    async def admin_stats(self) -> dict:
        """Shard sizes, log backlog per lane, router and sender counters (admin scope)."""
        stats = await self.fleet.stats()
        backlog = {lane: await self.events.lag(lane) for lane in LANES}
        for lane, size in backlog.items():
            metrics.set_backlog(lane, size)
        return {**stats, "log_backlog": backlog}

    # --- devices and users ---------------------------------------------------------------
    @api.post(
        "/v1/devices", status_code=201, tags=["devices"], dependencies=INGEST, responses=DEVICE_POST
    )
    async def register_device(self, device: DeviceIn, response: Response) -> DeviceOut:
        """Register a device; the same token again updates its row (200) instead of adding
        one; a token seen with another user moves to this one."""
        device_id, created = await register_device(self.users, device)
        if not created:
            response.status_code = 200
        return DeviceOut(device_id=device_id, created=created)

    @api.delete("/v1/devices/{device_id}", status_code=204, tags=["devices"], dependencies=INGEST)
    async def unregister_device(self, device_id: DeviceId) -> Response:
        await unregister_device(self.users, device_id)
        return Response(status_code=204)

    @api.put("/v1/users/{user_id}", tags=["users"], dependencies=INGEST)
    async def put_profile(self, user_id: UserId, profile: ProfileIn) -> ProfileIn:
        await self.fleet.shard(user_id).upsert_profiles.remote(profile_row(user_id, profile))
        return profile

    @api.put("/v1/users/{user_id}/preferences", tags=["users"], dependencies=INGEST)
    async def put_preferences(self, user_id: UserId, prefs: PreferencesIn) -> PreferencesIn:
        await self.fleet.shard(user_id).upsert_preferences.remote(preferences_row(user_id, prefs))
        return prefs

    @api.put("/v1/users/{user_id}/wishlist", tags=["users"], dependencies=INGEST)
    async def put_wishlist(self, user_id: UserId, wishlist: WishlistIn) -> WishlistOut:
        """Replace the user's wishlist; price drops of these products reach the user."""
        product_ids = list(dict.fromkeys(wishlist.product_ids))
        rows = wishlist_rows(user_id, product_ids)
        await self.fleet.shard(user_id).replace_wishlists.remote(rows, [user_id])
        return WishlistOut(user_id=user_id, product_ids=product_ids)

    # --- events and status ---------------------------------------------------------------
    @api.post("/v1/events", status_code=202, tags=["events"], dependencies=INGEST)
    async def post_events(self, body: EventsIn) -> EventsAccepted:
        """Check each event's template and variables (`api.event_checks`: a problem anywhere
        refuses the batch, naming every `events[i].<field>`), log the events durably, then
        answer. An event_id seen before is a duplicate and sends nothing."""
        await self.templates.check(body.events)
        triples = log_entries(body.events, self.settings.marketing.categories)
        fresh = await self.events.append(triples)
        metrics.record_ingested([e.type for e in body.events], [t[1] for t in triples], fresh)
        return EventsAccepted(
            accepted=[t[0] for t, new in zip(triples, fresh, strict=True) if new],
            duplicate=[t[0] for t, new in zip(triples, fresh, strict=True) if not new],
        )

    @api.get("/v1/notifications/{notification_id}", tags=["events"], dependencies=READ)
    async def get_notification(self, notification_id: NotificationId) -> NotificationStatus:
        """Status per device and channel. A price drop is one notification per user:
        `<event_id>:<user_id>`."""
        record = await self.state.get(notification_id)
        if record is not None:
            return notification_status(notification_id, record)
        accepted_at = await self.events.accepted_at(notification_id)
        if accepted_at is None:
            raise not_found("notification", notification_id, "notification_id", "unknown id")
        return NotificationStatus(
            notification_id=notification_id, state="accepted", accepted_at=accepted_at
        )

    # --- templates -----------------------------------------------------------------------
    @api.put("/v1/templates/{template_id}", status_code=201, **TEMPLATES, **TEMPLATE_PUT)
    async def put_template(
        self, template_id: TemplateId, body: TemplateBody, response: Response
    ) -> TemplateOut:
        """Store the shop's template of this id — a new one (201) or a replacement (200) —
        with the next version. Checked whole first (see `TemplateIn`): placeholders of
        declared variables only, balanced braces, locale tags, each locale's push within
        the providers' 4,096 bytes at its variables' longest; a 422 names every problem by
        its place (`locales.fr.body`, `variables.order_id.max_length`). Events see it
        within a second."""
        template = parse_template(template_id, body, self.templates.deeplink_schemes)
        stored, created = await self.templates.put(template)
        if not created:
            response.status_code = 200
        return stored

    @api.get("/v1/templates/{template_id}", **TEMPLATES)
    async def get_template(self, template_id: TemplateId) -> TemplateOut:
        """The shop's template of this id, else the shipped one (`version` 0, `source`
        "default")."""
        return await self.templates.get(template_id)

    @api.get("/v1/templates", **TEMPLATES)
    async def list_templates(self) -> TemplateList:
        """Every template in force: the shop's, laid over the shipped ones."""
        return await self.templates.listing()

    @api.delete("/v1/templates/{template_id}", status_code=204, **TEMPLATES)
    async def delete_template(self, template_id: TemplateId) -> Response:
        """Remove the shop's template; the shipped one of this id (if any) applies again."""
        await self.templates.delete(template_id)
        return Response(status_code=204)

    # --- campaigns and feedback ------------------------------------------------------------
    @api.post(
        "/v1/campaigns", status_code=202, tags=["campaigns"], dependencies=CAMPAIGNS,
        responses=CAMPAIGN_POST,
    )  # fmt: skip
    async def post_campaign(self, campaign: CampaignIn, response: Response) -> CampaignAccepted:
        """Accept a campaign; it starts at `send_at` (or now) in the marketing lane. Posting
        the same campaign again is a no-op (200); another body under the same id is a 409."""
        accepted = await accept_campaign(campaign, self.templates, self.campaigns)
        if not accepted.created:
            response.status_code = 200
        return accepted

    @api.get("/v1/campaigns/{campaign_id}", tags=["campaigns"], dependencies=CAMPAIGNS)
    async def get_campaign(self, campaign_id: CampaignId) -> CampaignStatus:
        """Progress: who was targeted, suppressed (by reason), selected, deferred to the
        end of quiet hours, sent, delivered, failed; per-variant sends and feedback."""
        status = await self.campaigns.get(campaign_id)
        if status is None:
            raise not_found("campaign", campaign_id, "campaign_id", "unknown campaign")
        return CampaignStatus.model_validate(status)

    @api.delete("/v1/campaigns/{campaign_id}", tags=["campaigns"], dependencies=CAMPAIGNS)
    async def cancel_campaign(self, campaign_id: CampaignId) -> CampaignStatus:
        """Cancel what is not sent yet (including pushes held for quiet hours). A finished
        campaign stays `done`."""
        if await self.campaigns.cancel(campaign_id) is None:
            raise not_found("campaign", campaign_id, "campaign_id", "unknown campaign")
        return CampaignStatus.model_validate(await self.campaigns.get(campaign_id))

    @api.post("/v1/feedback", tags=["feedback"], dependencies=INGEST)
    async def post_feedback(self, feedback: FeedbackIn) -> FeedbackAccepted:
        """What the user did with a notification. Counted once per (notification, action);
        a campaign's counts per variant steer its Thompson sampling, and every action lands
        in the feedback stream the next model is trained on."""
        return await record_feedback(
            self.users,
            feedback.notification_id,
            feedback.user_id,
            feedback.action,
            hide_others=False,
        )

    # --- models ----------------------------------------------------------------------------
    @api.get("/v1/models", tags=["models"], dependencies=ADMIN)
    async def list_models(self) -> ModelList:
        """The registry: every version with its metrics, and the one deployed (admin)."""
        return await self.models.listing()

    @api.post("/v1/models/{version}/shadow", tags=["models"], dependencies=ADMIN)
    async def shadow_model(self, version: ModelVersion) -> ModelList:
        """Score with `version` alongside the current model, logging its choices to the
        feedback log (`shadow/`) without acting on them (admin)."""
        return await self.models.set_shadow(version)

    @api.delete("/v1/models/shadow", tags=["models"], dependencies=ADMIN)
    async def stop_shadow(self) -> ModelList:
        """No shadow scoring any more (admin)."""
        return await self.models.set_shadow(None)

    @api.post("/v1/models/{version}/deploy", tags=["models"], dependencies=ADMIN)
    async def deploy_model(
        self, version: ModelVersion, require_lift: bool = False
    ) -> ModelDeployed:
        """Make `version` the ranker of new campaigns, in every fan-out worker, without a
        restart; running campaigns finish on the version they started with (admin). A model
        that does not load or does not match the feature contract is refused (422); with
        `?require_lift=true`, so is one whose off-policy lower bound on last week's logged
        sends does not beat the live policy (422 `no_lift`, `api.models`)."""
        return await self.models.deploy(version, require_lift=require_lift)

    @api.post("/v1/models/rollback", tags=["models"], dependencies=ADMIN)
    async def rollback_model(self) -> ModelDeployed:
        """Back to the version deployed before the current one (admin)."""
        return await self.models.rollback()

    # --- inbox ---------------------------------------------------------------------------
    @api.get("/v1/users/{user_id}/inbox", tags=["inbox"], dependencies=READ)
    async def get_inbox(
        self, user_id: UserId, limit: Annotated[int, Query(ge=1, le=200)] = 50
    ) -> Inbox:
        return Inbox(user_id=user_id, items=await self.inbox.latest(user_id, limit))


def app_builder(args: HeraldArgs) -> Application:
    """Build the Herald application; `args` override HERALD_* settings field by field."""
    settings = settings_from_args(args)
    refuse_insecure_defaults(settings)  # a clear error at deploy, not at the first send
    return HeraldIngress.bind(settings)


# `serve run serve_app:app`: checked when its replicas start (`HeraldIngress.__init__`).
app = HeraldIngress.bind(settings_from_args(HeraldArgs()))
