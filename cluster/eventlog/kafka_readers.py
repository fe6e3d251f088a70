"""A Kafka event log read loop's consumer state (`Reader`) and its rebalance listener
(`LogAssignments`), for `cluster.eventlog.kafka`.

The group's assignment is the Kafka log's partition lease: a partition has one reader at a
time only if a consumer losing it finishes its batch in hand before the new owner starts,
so the revocation waits for that (and drops the revoked partitions' unacked entries,
which the new owner re-reads from the last commit).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

log = logging.getLogger("herald.kafka_log")


@dataclass
class Reader:
    """One read loop's consumer and what it read but has not acked yet."""

    consumer: AIOKafkaConsumer
    # entry id -> (partition, offset, body, accepted_at, read at monotonic)
    unacked: dict[str, tuple[int, int, str, float, float]] = field(default_factory=dict)
    # highest offset read per partition
    read_up_to: dict[int, int] = field(default_factory=dict)
    # set while no batch is in hand (between its ack and the next read, or never read)
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class LogAssignments(ConsumerRebalanceListener):
    """Logs every partition assignment a read loop's consumer gets or loses (after a broker
    drop the group rejoins, and which loop owns which partitions is what a post-mortem of
    a lane that stopped moving needs first), and hands revoked partitions over only after
    the batch in hand: one reader per partition at a time, so a user's order holds."""

    def __init__(self, consumer: str, wait_s: float) -> None:
        self.consumer = consumer
        self.wait_s = wait_s
        self.reader: Reader | None = None

    async def on_partitions_revoked(self, revoked) -> None:
        self._log("revoked", revoked)
        reader = self.reader
        if reader is None:
            return
        try:
            await asyncio.wait_for(reader.idle.wait(), self.wait_s)
        except TimeoutError:
            log.warning("kafka log: %s gives partitions up mid-batch", self.consumer)
        gone = {tp.partition for tp in revoked}
        for entry_id in [e for e, row in reader.unacked.items() if row[0] in gone]:
            del reader.unacked[entry_id]
        for partition in gone:
            reader.read_up_to.pop(partition, None)

    async def on_partitions_assigned(self, assigned) -> None:
        self._log("assigned", assigned)

    def _log(self, what: str, parts) -> None:
        log.info(
            "kafka log: partitions %s",
            what,
            extra={"consumer": self.consumer, "partitions": sorted(p.partition for p in parts)},
        )
