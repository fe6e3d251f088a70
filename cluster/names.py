"""Names of Herald's named actors, in one place so every process finds the same ones."""

from cluster.settings import HeraldSettings
from cluster.vocabulary import CHANNELS, LANES

INGESTOR = "herald-kafka-ingestor"


def shard_name(index: int) -> str:
    return f"herald-shard-{index}"


def router_name(index: int) -> str:
    return f"herald-router-{index}"


def fanout_name(index: int) -> str:
    return f"herald-fanout-{index}"


def sender_name(channel: str, lane: str, replica: int = 0) -> str:
    """Each lane has its own sender per channel: its own connections, in-flight bound and
    rate limit, so a marketing fan-out never queues in front of an order update. Replica 0
    always runs; push senders grow more replicas with the lane's backlog."""
    suffix = f"-{replica}" if replica else ""
    return f"herald-sender-{channel}-{lane}{suffix}"


def channels(settings: HeraldSettings) -> tuple[str, ...]:
    """The channels this deployment sends on: the fallback webhook only when configured."""
    return CHANNELS + (("webhook",) if settings.fallback.webhook_url else ())


def senders(settings: HeraldSettings) -> tuple[tuple[str, str], ...]:
    """Every (channel, lane) that has a sender actor. The webhook fallback serves order
    updates only, so it exists in the transactional lane alone."""
    return tuple(
        (channel, lane)
        for lane in LANES
        for channel in channels(settings)
        if channel != "webhook" or lane == "transactional"
    )


def gateway_name(node_id: str) -> str:
    """The stream gateway of one node (`actors.stream_gateway`): one per node, named by it,
    so a node's gateway is found (and not started twice) by whoever looks for it."""
    return f"herald-stream-gateway-{node_id[:16]}"
