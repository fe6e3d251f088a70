"""Status answers shaped from what the stores hold: a notification's overall state from
its deliveries (`cluster.state.deliveries.DeliveryState.get`)."""

from __future__ import annotations

from typing import Any

from api.schemas import NotificationStatus


def overall_state(record: dict[str, Any]) -> str:
    """One word for all of a notification's deliveries: in progress while any may still
    be sent, delivered when all were, partially delivered when some were, expired when
    every one outlived its ttl_s unsent, else failed; a
    notification without deliveries is suppressed (with its reason) or not routed yet."""
    statuses = [d["status"] for d in record["deliveries"]]
    if not statuses:
        return "suppressed" if record["suppressed"] else "in_progress"
    if any(s in ("queued", "retrying") for s in statuses):
        return "in_progress"
    if all(s == "delivered" for s in statuses):
        return "delivered"
    if any(s == "delivered" for s in statuses):
        return "partially_delivered"
    if all(s == "expired" for s in statuses):
        return "expired"
    return "failed"


def notification_status(notification_id: str, record: dict[str, Any]) -> NotificationStatus:
    """The answer of `GET /v1/notifications/{id}` for a routed notification."""
    meta = record["meta"]
    return NotificationStatus(
        notification_id=notification_id,
        state=overall_state(record),
        user_id=meta.get("user_id"),
        type=meta.get("type"),
        accepted_at=meta.get("accepted_at"),
        suppressed_reason=record["suppressed"],
        deliveries=record["deliveries"],
    )
