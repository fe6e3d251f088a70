"""Herald's Serve entry point: the FastAPI ingress and the typed application builder.

    serve run serve_app:app                        # settings from HERALD_* variables
    serve run serve_app:app_builder shards=8       # any HeraldSettings field as an arg

The ingress validates at the door, writes events to the durable log before answering 202,
and talks to the shards for device and user writes. Everything after the log (routing,
sending, status) happens in Herald's actors.
"""

import asyncio
import json
import time
from typing import Annotated

import pyarrow as pa
import ray
from fastapi import FastAPI, Header, Path, Query, Response, WebSocket, WebSocketDisconnect
from ray import serve
from ray.serve import Application

from actors.bootstrap import ensure_actors
from actors.fanout_pool import running_fanout_workers
from actors.sender_pool import running_sender_replicas
from actors.senders.inbox import inbox_keys
from api.auth import Scope, check_key
from api.errors import ApiError, BodySizeLimit, install_error_handlers
from api.schemas import (
    CAMPAIGN_ID_PATTERN,
    ID_PATTERN,
    MODEL_VERSION_PATTERN,
    NOTIFICATION_ID_PATTERN,
    CampaignAccepted,
    CampaignIn,
    CampaignStatus,
    DeviceIn,
    DeviceOut,
    ErrorResponse,
    EventsAccepted,
    EventsIn,
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
from cluster import metrics
from cluster.eventlog import open_event_log
from cluster.logs import configure_logging
from cluster.names import INGESTOR, fanout_name, router_name, sender_name, senders, shard_name
from cluster.settings import ApiSettings, HeraldArgs, HeraldSettings, settings_from_args
from cluster.sharding import shard_of
from cluster.state import keys
from cluster.state.campaigns import CampaignStore, campaign_of
from cluster.state.clients import async_client
from cluster.state.deliveries import DeliveryState
from cluster.tables.devices import device_id_for
from cluster.vocabulary import LANE_OF_TYPE, LANES
from models.registry import Registry

UserId = Annotated[str, Path(pattern=ID_PATTERN)]
CampaignId = Annotated[str, Path(pattern=CAMPAIGN_ID_PATTERN)]
ModelVersion = Annotated[str, Path(pattern=MODEL_VERSION_PATTERN)]
Auth = Annotated[str | None, Header(alias="Authorization")]
ERRORS = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}

api = FastAPI(
    title="Herald",
    version="1",
    summary="Personalized notification fan-out: events in, pushes, inbox and streams out.",
    responses=ERRORS,
)
install_error_handlers(api)
# The ingress sets the real limit from its settings when a replica starts.
body_limit = BodySizeLimit.Limit(max_bytes=ApiSettings.model_fields["max_body_bytes"].default)
api.add_middleware(BodySizeLimit, limit=body_limit)


# Helpers live above the class: `serve.ingress` pickles the FastAPI app when the class is
# defined, so names the routes use must exist by then.
def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _unknown_campaign(campaign_id: str) -> ApiError:
    return ApiError(
        404,
        "not_found",
        f"no campaign {campaign_id!r}",
        fields=[{"field": "campaign_id", "reason": "unknown campaign"}],
    )


def _model_error(version: str, exc: Exception) -> ApiError:
    if isinstance(exc, KeyError):
        return ApiError(
            404,
            "not_found",
            f"no model version {version!r}",
            fields=[{"field": "version", "reason": "not in the registry"}],
        )
    return ApiError(
        422,
        "model_refused",
        f"model {version!r} cannot be deployed",
        fields=[{"field": "version", "reason": str(exc)}],
    )


def _overall_state(record: dict) -> str:
    statuses = [d["status"] for d in record["deliveries"]]
    if not statuses:
        return "suppressed" if record["suppressed"] else "in_progress"
    if any(s in ("queued", "retrying") for s in statuses):
        return "in_progress"
    if all(s == "delivered" for s in statuses):
        return "delivered"
    if any(s == "delivered" for s in statuses):
        return "partially_delivered"
    return "failed"


@serve.deployment(
    ray_actor_options={"num_cpus": 0.2},
    max_ongoing_requests=200,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 50},
)
@serve.ingress(api)
class HeraldIngress:
    def __init__(self, settings: HeraldSettings) -> None:
        configure_logging(settings)
        self.settings = settings
        body_limit.max_bytes = settings.api.max_body_bytes
        self.redis = async_client(settings)
        self.events = open_event_log(settings, self.redis)
        self.state = DeliveryState(settings, self.redis)
        self.campaigns = CampaignStore(settings, self.redis)
        self.registry = Registry(settings.models_root)
        ensure_actors(settings)
        self.shards = [
            ray.get_actor(shard_name(i), namespace=settings.topology.namespace)
            for i in range(settings.topology.shards)
        ]

    def _auth(self, authorization: str | None, scope: Scope) -> None:
        check_key(self.settings.api.api_keys, authorization, scope)

    def _shard(self, user_id: str) -> ray.actor.ActorHandle:
        return self.shards[int(shard_of([user_id], self.settings.topology.shards)[0])]

    # --- health --------------------------------------------------------------------------
    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    async def readyz(self, response: Response) -> dict[str, dict[str, bool]]:
        """Ready when Redis answers and every shard, router, fan-out worker, sender and (with
        Kafka configured) the Kafka ingestor answers within 2 s."""
        names = [shard_name(i) for i in range(self.settings.topology.shards)]
        names += [router_name(i) for i in range(self.settings.topology.routers)]
        names += [fanout_name(i) for i in range(self.settings.fanout.workers)]
        names += [sender_name(c, lane) for c, lane in senders(self.settings)]
        if self.settings.kafka.bootstrap:
            names.append(INGESTOR)

        async def up(name: str) -> bool:
            try:
                await asyncio.wait_for(self._actor(name).ping.remote(), timeout=2)
                return True
            except Exception:
                return False

        async def redis_up() -> bool:
            try:
                return bool(await asyncio.wait_for(self.redis.ping(), timeout=2))
            except Exception:
                return False

        results = await asyncio.gather(redis_up(), *[up(n) for n in names])
        checks = {"redis": results[0], **dict(zip(names, results[1:], strict=True))}
        if not all(checks.values()):
            response.status_code = 503
        return {"checks": checks}

    @api.get("/v1/admin/stats", tags=["admin"])
    async def admin_stats(self, authorization: Auth = None) -> dict:
        """Shard sizes, log backlog per lane, router and sender counters (admin scope)."""
        self._auth(authorization, "admin")
        shards = await asyncio.gather(*[s.stats.remote() for s in self.shards])
        routers = await asyncio.gather(
            *[
                self._actor(router_name(i)).ping.remote()
                for i in range(self.settings.topology.routers)
            ]
        )
        replicas = [
            sender_name(c, lane, r)
            for c, lane in senders(self.settings)
            for r in running_sender_replicas(self.settings, c, lane)
        ]
        pings = await asyncio.gather(*[self._actor(name).ping.remote() for name in replicas])
        backlog = {lane: await self.events.lag(lane) for lane in LANES}
        for lane, size in backlog.items():
            metrics.set_backlog(lane, size)
        return {"shards": shards, "routers": routers, "senders": pings, "log_backlog": backlog}

    def _actor(self, name: str) -> ray.actor.ActorHandle:
        return ray.get_actor(name, namespace=self.settings.topology.namespace)

    # --- devices and users ---------------------------------------------------------------
    @api.post("/v1/devices", status_code=201, tags=["devices"])
    async def register_device(
        self, device: DeviceIn, response: Response, authorization: Auth = None
    ) -> DeviceOut:
        """Register a device; the same token again updates its row (200) instead of adding one."""
        self._auth(authorization, "ingest")
        device_id = device_id_for(device.platform, device.app_id, device.token)
        owners = keys.device_owners(self.settings)
        previous = await self.redis.hget(owners, device_id)
        if previous is not None and previous.decode() != device.user_id:
            # The phone changed hands: the old user must stop getting pushes on it.
            await self._shard(previous.decode()).deactivate_devices.remote([device_id])
        row = pa.Table.from_pylist(
            [
                {
                    **device.model_dump(),
                    "device_id": device_id,
                    "active": True,
                    "updated_at": time.time(),
                }
            ]
        )
        await self._shard(device.user_id).upsert_devices.remote(row)
        await self.redis.hset(owners, device_id, device.user_id)
        if previous is not None:
            response.status_code = 200
        return DeviceOut(device_id=device_id, created=previous is None)

    @api.delete("/v1/devices/{device_id}", status_code=204, tags=["devices"])
    async def unregister_device(
        self, device_id: Annotated[str, Path(pattern=ID_PATTERN)], authorization: Auth = None
    ) -> Response:
        self._auth(authorization, "ingest")
        owners = keys.device_owners(self.settings)
        owner = await self.redis.hget(owners, device_id)
        if owner is None:
            raise ApiError(
                404,
                "not_found",
                f"no device {device_id!r}",
                fields=[{"field": "device_id", "reason": "unknown device"}],
            )
        await self._shard(owner.decode()).deactivate_devices.remote([device_id])
        await self.redis.hdel(owners, device_id)
        return Response(status_code=204)

    @api.put("/v1/users/{user_id}", tags=["users"])
    async def put_profile(
        self, user_id: UserId, profile: ProfileIn, authorization: Auth = None
    ) -> ProfileIn:
        self._auth(authorization, "ingest")
        row = {**profile.model_dump(), "user_id": user_id, "updated_at": time.time()}
        row["attributes"] = json.dumps(row["attributes"])
        await self._shard(user_id).upsert_profiles.remote(pa.Table.from_pylist([row]))
        return profile

    @api.put("/v1/users/{user_id}/preferences", tags=["users"])
    async def put_preferences(
        self, user_id: UserId, prefs: PreferencesIn, authorization: Auth = None
    ) -> PreferencesIn:
        self._auth(authorization, "ingest")
        quiet = prefs.quiet_hours
        row = {
            "user_id": user_id,
            **prefs.channels.model_dump(),
            **{f"cat_{k}": v for k, v in prefs.categories.model_dump().items()},
            "quiet_start_min": _minutes(quiet.start) if quiet else None,
            "quiet_end_min": _minutes(quiet.end) if quiet else None,
            "max_marketing_per_day": prefs.max_marketing_per_day,
            "updated_at": time.time(),
        }
        await self._shard(user_id).upsert_preferences.remote(pa.Table.from_pylist([row]))
        return prefs

    @api.put("/v1/users/{user_id}/wishlist", tags=["users"])
    async def put_wishlist(
        self, user_id: UserId, wishlist: WishlistIn, authorization: Auth = None
    ) -> WishlistOut:
        """Replace the user's wishlist; price drops of these products reach the user."""
        self._auth(authorization, "ingest")
        product_ids = list(dict.fromkeys(wishlist.product_ids))
        rows = pa.table(
            {"user_id": pa.array([user_id] * len(product_ids), pa.string()),
             "product_id": pa.array(product_ids, pa.string())}
        )  # fmt: skip
        await self._shard(user_id).replace_wishlists.remote(rows, [user_id])
        return WishlistOut(user_id=user_id, product_ids=product_ids)

    # --- events and status ---------------------------------------------------------------
    @api.post("/v1/events", status_code=202, tags=["events"])
    async def post_events(self, body: EventsIn, authorization: Auth = None) -> EventsAccepted:
        """Log events durably, then answer. An event_id seen before is a duplicate and sends
        nothing; its notification_id is its event_id."""
        self._auth(authorization, "ingest")
        triples = [
            (e.event_id, LANE_OF_TYPE[e.type], e.model_dump(mode="json")) for e in body.events
        ]
        fresh = await self.events.append(triples)
        metrics.record_ingested([e.type for e in body.events], [t[1] for t in triples], fresh)
        return EventsAccepted(
            accepted=[t[0] for t, new in zip(triples, fresh, strict=True) if new],
            duplicate=[t[0] for t, new in zip(triples, fresh, strict=True) if not new],
        )

    @api.get("/v1/notifications/{notification_id}", tags=["events"])
    async def get_notification(
        self,
        notification_id: Annotated[str, Path(pattern=NOTIFICATION_ID_PATTERN)],
        authorization: Auth = None,
    ) -> NotificationStatus:
        """Status per device and channel. A price drop is one notification per user:
        `<event_id>:<user_id>`."""
        self._auth(authorization, "ingest")
        record = await self.state.get(notification_id)
        if record is None:
            accepted_at = await self.events.accepted_at(notification_id)
            if accepted_at is None:
                raise ApiError(
                    404,
                    "not_found",
                    f"no notification {notification_id!r}",
                    fields=[{"field": "notification_id", "reason": "unknown id"}],
                )
            return NotificationStatus(
                notification_id=notification_id, state="accepted", accepted_at=accepted_at
            )
        meta, deliveries = record["meta"], record["deliveries"]
        return NotificationStatus(
            notification_id=notification_id,
            state=_overall_state(record),
            user_id=meta.get("user_id"),
            type=meta.get("type"),
            accepted_at=meta.get("accepted_at"),
            suppressed_reason=record["suppressed"],
            deliveries=deliveries,
        )

    # --- campaigns and feedback ------------------------------------------------------------
    @api.post("/v1/campaigns", status_code=202, tags=["campaigns"])
    async def post_campaign(
        self, campaign: CampaignIn, response: Response, authorization: Auth = None
    ) -> CampaignAccepted:
        """Accept a campaign; it starts at `send_at` (or now) in the marketing lane. Posting
        the same campaign again is a no-op (200); another body under the same id is a 409."""
        self._auth(authorization, "ingest")
        spec = campaign.model_dump(mode="json")
        created, previous = await self.campaigns.create(spec)
        if not created:
            if previous is None or json.loads(previous) != spec:
                raise ApiError(
                    409,
                    "conflict",
                    f"campaign {campaign.campaign_id!r} exists with another definition",
                    fields=[{"field": "campaign_id", "reason": "already used"}],
                )
            response.status_code = 200
        status = await self.campaigns.get(campaign.campaign_id)
        return CampaignAccepted(
            campaign_id=campaign.campaign_id,
            state=status["state"],
            send_at=status["send_at"],
            created=created,
        )

    @api.get("/v1/campaigns/{campaign_id}", tags=["campaigns"])
    async def get_campaign(
        self, campaign_id: CampaignId, authorization: Auth = None
    ) -> CampaignStatus:
        """Progress: who was targeted, suppressed (by reason), selected, deferred to the
        end of quiet hours, sent, delivered, failed; per-variant sends and feedback."""
        self._auth(authorization, "ingest")
        status = await self.campaigns.get(campaign_id)
        if status is None:
            raise _unknown_campaign(campaign_id)
        return CampaignStatus.model_validate(status)

    @api.delete("/v1/campaigns/{campaign_id}", tags=["campaigns"])
    async def cancel_campaign(
        self, campaign_id: CampaignId, authorization: Auth = None
    ) -> CampaignStatus:
        """Cancel what is not sent yet (including pushes held for quiet hours). A finished
        campaign stays `done`."""
        self._auth(authorization, "ingest")
        if await self.campaigns.cancel(campaign_id) is None:
            raise _unknown_campaign(campaign_id)
        return CampaignStatus.model_validate(await self.campaigns.get(campaign_id))

    @api.post("/v1/feedback", tags=["campaigns"])
    async def post_feedback(
        self, feedback: FeedbackIn, authorization: Auth = None
    ) -> FeedbackAccepted:
        """What the user did with a notification. Counted once per (notification, action);
        a campaign's counts per variant steer its Thompson sampling, and every action lands
        in the feedback stream the next model is trained on."""
        self._auth(authorization, "ingest")
        nid = feedback.notification_id
        record = await self.state.get(nid)
        if record is None:
            raise ApiError(
                404,
                "not_found",
                f"no notification {nid!r}",
                fields=[{"field": "notification_id", "reason": "unknown id"}],
            )
        meta = record["meta"]
        if meta.get("user_id") != feedback.user_id:
            raise ApiError(
                422,
                "invalid",
                "the notification was not sent to this user",
                fields=[{"field": "user_id", "reason": "not the notification's recipient"}],
            )
        now = time.time()
        counted = bool(await self.redis.hsetnx(self.state.key(nid), f"fb:{feedback.action}", now))
        if counted:
            pipe = self.redis.pipeline(transaction=False)
            campaign_id = campaign_of(nid)
            if campaign_id is not None and meta.get("variant_id"):
                field = f"variant:{meta['variant_id']}:{feedback.action}"
                pipe.hincrby(self.campaigns.key(campaign_id), field, 1)
            pipe.xadd(
                keys.feedback(self.settings),
                {
                    "notification_id": nid,
                    "user_id": feedback.user_id,
                    "action": feedback.action,
                    "type": meta.get("type") or "",
                    "campaign_id": campaign_id or "",
                    "variant_id": meta.get("variant_id") or "",
                    "at": now,
                },
                maxlen=self.settings.feedback.stream_max,
                approximate=True,
            )
            await pipe.execute()
        return FeedbackAccepted(notification_id=nid, action=feedback.action, counted=counted)

    # --- models ----------------------------------------------------------------------------
    @api.get("/v1/models", tags=["models"])
    async def list_models(self, authorization: Auth = None) -> ModelList:
        """The registry: every version with its metrics, and the one deployed (admin)."""
        self._auth(authorization, "admin")
        current = await asyncio.to_thread(self.registry.current)
        shadow = await asyncio.to_thread(self.registry.shadow)
        models = await asyncio.to_thread(self.registry.list)
        return ModelList(current=current, shadow=shadow, models=models)

    @api.post("/v1/models/{version}/shadow", tags=["models"])
    async def shadow_model(self, version: ModelVersion, authorization: Auth = None) -> ModelList:
        """Score with `version` alongside the current model, logging its choices to the
        feedback log (`shadow/`) without acting on them (admin)."""
        self._auth(authorization, "admin")
        try:
            await asyncio.to_thread(self.registry.set_shadow, version)
        except (KeyError, ValueError) as exc:
            raise _model_error(version, exc) from exc
        await self._reload_workers()
        return await self.list_models(authorization)

    @api.delete("/v1/models/shadow", tags=["models"])
    async def stop_shadow(self, authorization: Auth = None) -> ModelList:
        """No shadow scoring any more (admin)."""
        self._auth(authorization, "admin")
        await asyncio.to_thread(self.registry.set_shadow, None)
        await self._reload_workers()
        return await self.list_models(authorization)

    @api.post("/v1/models/{version}/deploy", tags=["models"])
    async def deploy_model(
        self, version: ModelVersion, authorization: Auth = None
    ) -> ModelDeployed:
        """Make `version` the ranker of new campaigns, in every fan-out worker, without a
        restart; running campaigns finish on the version they started with (admin). A model
        that does not load or does not match the feature contract is refused (422)."""
        self._auth(authorization, "admin")
        started = time.perf_counter()
        try:
            previous = await asyncio.to_thread(self.registry.deploy, version)
        except (KeyError, ValueError) as exc:
            raise _model_error(version, exc) from exc
        workers = await self._reload_workers()
        return ModelDeployed(
            previous=previous, current=version, workers=workers,
            took_s=time.perf_counter() - started,
        )  # fmt: skip

    @api.post("/v1/models/rollback", tags=["models"])
    async def rollback_model(self, authorization: Auth = None) -> ModelDeployed:
        """Back to the version deployed before the current one (admin)."""
        self._auth(authorization, "admin")
        started = time.perf_counter()
        try:
            previous = await asyncio.to_thread(self.registry.rollback)
        except ValueError as exc:
            raise ApiError(409, "nothing_to_roll_back", str(exc)) from exc
        current = await asyncio.to_thread(self.registry.current)
        workers = await self._reload_workers()
        return ModelDeployed(
            previous=previous, current=current, workers=workers,
            took_s=time.perf_counter() - started,
        )  # fmt: skip

    async def _reload_workers(self) -> list[str]:
        """Reload the fixed pool and the grown workers that are up; a grown worker still
        waiting for a node loads the registry's current version when it starts."""
        fixed = [fanout_name(i) for i in range(self.settings.fanout.workers)]
        grown = [n for n in running_fanout_workers(self.settings) if n not in fixed]
        versions = list(await asyncio.gather(*[self._actor(n).reload.remote() for n in fixed]))
        for name in grown:
            try:
                versions.append(
                    await asyncio.wait_for(
                        self._actor(name).reload.remote(), self.settings.fanout.grow_wait_s
                    )
                )
            except (TimeoutError, ray.exceptions.RayActorError):
                pass  # pending or just removed by the idle shrink
        return versions

    # --- inbox ---------------------------------------------------------------------------
    @api.get("/v1/users/{user_id}/inbox", tags=["inbox"])
    async def get_inbox(
        self,
        user_id: UserId,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        authorization: Auth = None,
    ) -> Inbox:
        self._auth(authorization, "ingest")
        zset, items_key, _ = inbox_keys(self.settings, user_id)
        ids = await self.redis.zrevrange(zset, 0, limit - 1)
        items = await self.redis.hmget(items_key, ids) if ids else []
        return Inbox(user_id=user_id, items=[json.loads(i) for i in items if i is not None])

    @api.websocket("/v1/users/{user_id}/stream")
    async def stream(self, websocket: WebSocket, user_id: str) -> None:
        """Live inbox items. Browsers cannot set headers on a WebSocket, so the key may
        also come as `?api_key=`."""
        header = websocket.headers.get("authorization")
        key = websocket.query_params.get("api_key")
        try:
            check_key(
                self.settings.api.api_keys, header or (f"Bearer {key}" if key else None), "ingest"
            )
        except ApiError as exc:
            await websocket.close(code=4401 if exc.status == 401 else 4403, reason=exc.message)
            return
        await websocket.accept()
        _, _, channel = inbox_keys(self.settings, user_id)
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(channel)
        try:
            await websocket.send_json({"type": "subscribed", "user_id": user_id})
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    item = json.loads(message["data"])
                    await websocket.send_json({"type": "notification", "item": item})
        except WebSocketDisconnect:
            pass
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()


def app_builder(args: HeraldArgs) -> Application:
    """Build the Herald application; `args` override HERALD_* settings field by field."""
    return HeraldIngress.bind(settings_from_args(args))


app = app_builder(HeraldArgs())
