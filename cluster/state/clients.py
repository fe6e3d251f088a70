"""The Redis clients every Herald process uses, configured once: one Redis or a Redis Cluster.

A Redis restart leaves every pooled connection dead, and redis-py only finds out when a
command fails on one ("Connection lost" while writing): a fan-out, a sender call or a
lease renewal then fails although Redis is back. So a connection idle for a few seconds is
pinged before it is used (`health_check_interval`), and connection errors and timeouts are
retried on a fresh connection with a short backoff. A retried write can run twice; every
write Herald makes is idempotent or a counter, where that is accepted.

**Redis Cluster.** `HERALD_REDIS_CLUSTER=true`, or a URL whose scheme is `redis+cluster://`
(`rediss+cluster://` for TLS), makes the clients `RedisCluster`s. Such a URL may name
several startup nodes, `redis+cluster://10.0.0.1:6379,10.0.0.2:6379/0`; one is enough to
discover the rest, more survive one being down at start. Every key carries a hash tag
(`cluster.state.keys`), so each Lua script and `MULTI` touches one slot, and a store
splits a batch by slot where one script would otherwise span several.

redis-py refuses `EVALSHA` inside a cluster pipeline (it cannot load a missing script on
the right node), yet the stores queue scripts on pipelines (`script(..., client=pipe)`)
to keep a batch one round trip. `HeraldRedisCluster` makes that work unchanged: it
remembers each registered script's text, loads a script on every master before the first
pipeline that uses it, and when a master answers `NOSCRIPT` (it restarted, its script
cache is empty) loads it again and runs those calls once more — a `NOSCRIPT` call did
not run, so running it again is not a duplicate. The same stores therefore run on one
Redis exactly as before, and on a cluster with one pipeline per batch (redis-py sends each
node its share concurrently).

**Credentials and TLS.** Every client — the pooled ones, the pub/sub one, the streams'
slots (`cluster.state.live`) — takes its options from `connection_options`: the ACL user
and password (`HERALD_REDIS_USERNAME`, `HERALD_REDIS_PASSWORD`; credentials written in the
URL win, so a URL with its own keeps working) and, for a `rediss://` URL, the CA bundle
that verifies the server's certificate (`HERALD_REDIS_CA_FILE`; the hostname is checked
too). Without a CA file a `rediss://` URL is verified against the system's roots.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError
from redis.retry import Retry

from cluster.settings import HeraldSettings

HEALTH_CHECK_S = 5
RETRIES = 3
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PUBSUB_CONNECTIONS = 4  # the subscription, a reconnect, a slot update


def is_cluster(settings: HeraldSettings) -> bool:
    """Whether `HERALD_REDIS_URL` is to be spoken to as a Redis Cluster."""
    scheme = urlsplit(settings.state.redis_url).scheme
    return settings.state.redis_cluster or scheme in CLUSTER_SCHEMES


def _nodes(settings: HeraldSettings) -> tuple[str, list[tuple[str, int]]]:
    """(a plain `redis://` URL of the first node, every node the URL names): a cluster URL
    turned into what redis-py parses, its further startup nodes kept aside."""
    parts = urlsplit(settings.state.redis_url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    credentials, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "6379")
        nodes.append((name, int(port)))
    first = f"{credentials}@{hosts.split(',')[0]}" if credentials else hosts.split(",")[0]
    return urlunsplit((scheme, first, parts.path, parts.query, "")), nodes


def connection_options(settings: HeraldSettings) -> dict[str, Any]:
    """Credentials and TLS verification every connection to Herald's Redis takes (see the
    module docstring), as keyword arguments of redis-py's `from_url`."""
    state = settings.state
    options: dict[str, Any] = {}
    if state.redis_username:
        options["username"] = state.redis_username
    if state.redis_password:
        options["password"] = state.redis_password
    scheme = urlsplit(state.redis_url).scheme
    if CLUSTER_SCHEMES.get(scheme, scheme) == "rediss":
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if state.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(state.redis_ca_file)
    return options


def _options(settings: HeraldSettings, retry_class: type[Retry] | type[AsyncRetry]) -> dict:
    """The one configuration of every client (see the module docstring); only the Retry
    class differs, because redis-py's asyncio client needs its own."""
    return {
        "url": _nodes(settings)[0] if is_cluster(settings) else settings.state.redis_url,
        "health_check_interval": HEALTH_CHECK_S,
        "retry": retry_class(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        "retry_on_error": [ConnectionError, TimeoutError],
        **connection_options(settings),
    }


def async_client(settings: HeraldSettings) -> aioredis.Redis:
    """For the actors and the API, which run on an event loop."""
    options = _options(settings, AsyncRetry)
    if not is_cluster(settings):
        return aioredis.Redis.from_url(**options)
    startup = [ClusterNode(host, port) for host, port in _nodes(settings)[1][1:]]
    return HeraldRedisCluster.from_url(**options, startup_nodes=startup or None)


def sync_client(settings: HeraldSettings) -> redis.Redis:
    """For drivers and scripts (the CLI, bulk imports, tests) that run no event loop. Its
    cluster pipelines take no scripts; no synchronous caller queues one."""
    options = _options(settings, Retry)
    if not is_cluster(settings):
        return redis.Redis.from_url(**options)
    startup = [redis.cluster.ClusterNode(h, p) for h, p in _nodes(settings)[1][1:]]
    return redis.RedisCluster.from_url(**options, startup_nodes=startup or None)


def atomic_pipeline(client: Any) -> Any:
    """A pipeline that is a `MULTI` transaction on one Redis and a plain pipeline on a
    cluster, for a batch whose keys span slots: a cluster cannot make such a batch atomic,
    each node runs its share in order. Callers must be safe with that — write what makes a
    step final last, and only idempotent writes or counters before it."""
    if isinstance(client, aioredis.RedisCluster | redis.RedisCluster):
        return client.pipeline(transaction=False)
    return client.pipeline(transaction=True)


async def ping(client: aioredis.Redis, timeout_s: float = 2.0) -> bool:
    """Whether Redis answers within `timeout_s` (readiness); an error is a no, not a raise."""
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=timeout_s))
    except Exception:
        return False


class HeraldRedisCluster(aioredis.RedisCluster):
    """`redis.asyncio.RedisCluster` whose pipelines run registered scripts (module doc)."""

    # sha → script text of every script registered on any such client: a store may queue
    # its script on a pipeline of another client than the one it registered on.
    script_texts: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: set[str] = set()  # shas loaded on every master by this client

    def register_script(self, script: Any) -> Any:
        registered = super().register_script(script)
        HeraldRedisCluster.script_texts[registered.sha] = registered.script
        return registered

    async def load_scripts(self, shas: set[str]) -> None:
        """SCRIPT LOAD on every master (redis-py sends it to all primaries)."""
        for sha in shas:
            await self.script_load(self.script_texts[sha])
            self.loaded.add(sha)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is not supported")
        return ScriptClusterPipeline(self, transaction)


class ScriptClusterPipeline(ClusterPipeline):
    """A cluster pipeline that takes `EVALSHA` of the client's registered scripts."""

    def __await__(self) -> Any:
        """`await pipe` (what a script queued on a pipeline does) must not empty the queue,
        as redis-py's cluster pipeline does on `initialize()`."""
        return self._ready().__await__()

    async def _ready(self) -> ScriptClusterPipeline:
        if self.cluster_client._initialize:
            await self.cluster_client.initialize()
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client: HeraldRedisCluster = self.cluster_client
        # What is queued, in the order of the answers (execute() then empties the queue).
        queued = [command.args for command in self._execution_strategy._command_queue]
        shas = {args[1] for args in queued if args[0] == "EVALSHA"}
        await client.load_scripts(shas - client.loaded)
        results = await super().execute(False, allow_redirections)
        again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if again:  # a master restarted since: its cache is empty, those calls did not run
            await client.load_scripts({queued[i][1] for i in again})
            for i in again:
                results[i] = await client.execute_command(*queued[i])
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results


def pubsub_client(settings: HeraldSettings) -> aioredis.Redis:
    """A plain client of its own, of at most `PUBSUB_CONNECTIONS` connections, to one node
    (the URL's first), for pub/sub: a subscription holds its connection for as long as it
    lasts, so it must not take one from the pool ingestion uses. On a Redis Cluster one
    node is enough — a classic PUBLISH reaches every node's subscribers."""
    url = _nodes(settings)[0] if is_cluster(settings) else settings.state.redis_url
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=PUBSUB_CONNECTIONS,
        timeout=5,
        health_check_interval=HEALTH_CHECK_S,
        **connection_options(settings),
    )
    return aioredis.Redis(connection_pool=pool)
