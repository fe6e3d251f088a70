"""Names of Herald's named actors, in one place so every process finds the same ones."""

CHANNELS = ("apns", "fcm", "inbox")


def shard_name(index: int) -> str:
    return f"herald-shard-{index}"


def router_name(index: int) -> str:
    return f"herald-router-{index}"


def sender_name(channel: str) -> str:
    return f"herald-sender-{channel}"
