"""Names of Herald's named actors, in one place so every process finds the same ones."""

from cluster.settings import HeraldSettings

CHANNELS = ("apns", "fcm", "inbox")
PUSH_CHANNELS = ("apns", "fcm")
INGESTOR = "herald-kafka-ingestor"


def shard_name(index: int) -> str:
    return f"herald-shard-{index}"


def router_name(index: int) -> str:
    return f"herald-router-{index}"


def sender_name(channel: str) -> str:
    return f"herald-sender-{channel}"


def channels(settings: HeraldSettings) -> tuple[str, ...]:
    """The channels this deployment sends on: the fallback webhook only when configured."""
    return CHANNELS + (("webhook",) if settings.fallback_webhook_url else ())
