"""Client setup, in one place: a single server, a Redis Cluster or a Sentinel-managed primary (the engine and
the CLI both build their clients here)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import redis as syncredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from ..config import HybridConfig
from ..errors import ConfigurationError

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, bool]:
    """`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]` -> (sentinels, service, db,
    password, tls)."""
    tls = url.startswith("rediss+")
    rest = url.split("://", 1)[1].split("?", 1)[0]
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigurationError("a sentinel URL needs the service name: redis+sentinel://host:port/mymaster")
    sentinels = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        sentinels.append((host or hp, int(port) if port and host else 26379))
    return sentinels, unquote(parts[0]), int(parts[1]) if len(parts) > 1 else 0, password, tls


def make_client(config: HybridConfig, cluster: bool, *, sync: bool) -> Any:
    """One place that decides how to talk to Redis: a single server, a Cluster, or a Sentinel-managed primary."""
    url, kwargs = _pool_kwargs(config, SyncRetry(NoBackoff(), 1) if sync else Retry(NoBackoff(), 1))
    if url.startswith(SENTINEL_SCHEMES):
        sentinels, service, db, password, tls = parse_sentinel_url(url)
        conn = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout", "retry")}
        conn.update(db=db, password=kwargs.get("password", password), ssl=tls, **_DRIVER)
        probe = {"socket_timeout": config.redis_timeout, "socket_connect_timeout": config.redis_timeout, **_DRIVER}
        sentinel_cls = SyncSentinel if sync else AsyncSentinel
        # The returned client asks the sentinels for the current primary on (re)connect: failovers are
        # followed without a restart.
        return sentinel_cls(sentinels, sentinel_kwargs=probe, **conn).master_for(service)
    if cluster:
        # Every script touches one slot (keys.py), so EVALSHA routes to the slot's primary; pipelines are split
        # per node by the client.
        cls: Any = SyncRedisCluster if sync else AsyncRedisCluster
        return cls.from_url(url, **_cluster_kwargs(kwargs))
    if sync:
        return syncredis.Redis(connection_pool=syncredis.BlockingConnectionPool.from_url(url, **kwargs))
    # A plain pool: RedisCache bounds concurrency with a semaphore, which costs far less per call than the
    # blocking pool's condition variable and timeout.
    kwargs.pop("timeout", None)
    return aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(url, **kwargs))


def _cluster_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pool options that RedisCluster accepts (it keeps one pool per node).

    The retry is ours too: the client's default (ten tries with backoff) rides out a master's failover by
    stalling each call on its slots for seconds, where the engine should fail over to PostgreSQL within the
    timeout; one quick retry still follows a topology change that is already done."""
    out = {k: v for k, v in kwargs.items()
           if k in ("socket_timeout", "socket_connect_timeout", "password", "driver_info", "lib_version", "retry")}
    out["max_connections"] = kwargs["max_connections"]
    return out


async def detect_cluster(config: HybridConfig) -> bool:
    """Whether `redis_url` points at a Redis Cluster node (INFO cluster), unless the config says."""
    if config.redis_cluster is not None:
        return config.redis_cluster
    if config.redis_dsn().startswith(SENTINEL_SCHEMES):
        return False
    url, kwargs = _pool_kwargs(config, Retry(NoBackoff(), 0))
    kwargs.pop("timeout", None)
    kwargs.pop("max_connections", None)
    client = aioredis.Redis.from_url(url, **kwargs)
    try:
        info = await client.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))
    except (RedisError, OSError):
        return False  # unreachable now: the engine fails over to PostgreSQL and retries later
    finally:
        await client.aclose()


def _driver_kwargs() -> dict[str, Any]:
    # Given explicitly: without it, redis-py reads its package metadata (file I/O) in every Connection's
    # constructor, which would block the event loop of whoever opens a connection.
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7.1
        return {"lib_version": syncredis.__version__}
    return {"driver_info": DriverInfo(lib_version=syncredis.__version__)}


_DRIVER = _driver_kwargs()


def _pool_kwargs(config: HybridConfig, retry: Any) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {
        **_DRIVER,
        "socket_timeout": config.redis_timeout,
        "socket_connect_timeout": min(config.connect_timeout, max(config.redis_timeout, 0.1) * 4),
        "max_connections": config.redis_max_connections,
        "timeout": config.redis_timeout * 4,  # waiting for a free pooled connection
        "retry": retry,  # one quick retry, so failover is detected within the timeout
    }
    if config.redis_password is not None:
        kwargs["password"] = config.redis_password.get_secret_value()
    url = config.redis_dsn()
    path = url.split("://", 1)[1].split("?", 1)[0]
    if ("/" not in path or path.endswith("/")) and not url.startswith(SENTINEL_SCHEMES):
        kwargs["db"] = config.redis_db
    return url, kwargs
