"""What the commands share: settings from the environment, the servers' clients, and what to say when a server
fails (a cause and a fix, never a password).

Diagnosis (doctor, the pre-checks) uses short-lived connections of its own, never the engine's pools; the
commands that read or change data go through a started `HybridMemory`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .. import HybridMemory
from ..cache import make_client
from ..config import HybridConfig, Mode, redact_url
from ..store import PostgresStore, migrations
from .output import CliError, why

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
T = TypeVar("T")


def database_url_set() -> bool:
    return bool(os.environ.get("DATABASE_URL") or os.environ.get("HYBRID_MEMORY_DATABASE_URL"))


def load_config(args: argparse.Namespace, **overrides: object) -> HybridConfig:
    """`HybridConfig.from_env`, with `--namespace` over HYBRID_MEMORY_NAMESPACE and a local default database."""
    env: dict[str, object] = {}
    if not database_url_set():
        env["database_url"] = DEFAULT_PG
    if getattr(args, "namespace", None):
        env["namespace"] = args.namespace
    env.update(overrides)
    return HybridConfig.from_env(**env)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion, also when called from a running loop (e.g. `main()` in a notebook cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- Redis ---------------------------------------------------------------------------------------------------
def redis_client(config: HybridConfig, cluster: bool = False) -> Any:
    """The engine's blocking client for `config`'s Redis (single server, Cluster or Sentinel primary).

    Its socket timeout is at least a second, not redis_timeout: a diagnosis should measure a slow server
    (and say it is slow) rather than time out on it.
    """
    patient = config.model_copy(update={"redis_timeout": max(config.redis_timeout, 1.0)})
    return make_client(patient, cluster, sync=True)


def close_redis(client: Any) -> None:
    client.close()
    pool = getattr(client, "connection_pool", None)  # a Cluster client has none: close() ends its nodes'
    if pool is not None:
        pool.disconnect()  # the pool was handed to the client, so close() leaves its sockets open


def redis_problem(exc: BaseException, config: HybridConfig) -> tuple[str, str]:
    """(cause, fix) for a failed Redis call."""
    import redis

    where = redact_url(config.redis_dsn())
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        if "NOAUTH" in text or (config.redis_password is None and "@" not in config.redis_dsn()):
            return (f"Redis at {where} requires a password ({why(exc)})",
                    "set REDIS_PASSWORD, or put the password in REDIS_URL (redis://:PASSWORD@host:port/0)")
        return (f"Redis at {where} refused the password ({why(exc)})",
                "correct REDIS_PASSWORD or the password in REDIS_URL")
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return (f"Redis at {where} did not answer within {config.connect_timeout:g} s ({why(exc)})",
                "check the host, port and firewall; raise HYBRID_MEMORY_CONNECT_TIMEOUT on a slow network")
    if isinstance(exc, redis.ConnectionError | OSError):
        return (f"Redis at {where} is down: nothing accepts connections there ({why(exc)})",
                "start Redis (redis-server), or set REDIS_URL to where it runs")
    return f"Redis at {where} failed ({why(exc)})", "see the error above; check REDIS_URL"


# -- PostgreSQL ----------------------------------------------------------------------------------------------
def pg_problem(exc: BaseException, config: HybridConfig) -> tuple[str, str]:
    """(cause, fix) for a failed PostgreSQL connection."""
    import asyncpg

    dsn = config.database_dsn() or ""
    where = redact_url(dsn)
    database = urlsplit(dsn).path.lstrip("/") or "(default)"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (f"PostgreSQL at {where} refused the password ({why(exc)})",
                "correct the password in DATABASE_URL")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (f"PostgreSQL at {where}: database {database!r} does not exist",
                f"create it (createdb {database}), or point DATABASE_URL at an existing database")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return (f"PostgreSQL at {where} refused the login ({why(exc)})",
                "create the role or allow it in pg_hba.conf, or correct the user in DATABASE_URL")
    if isinstance(exc, TimeoutError):
        return (f"PostgreSQL at {where} did not answer within {config.connect_timeout:g} s",
                "check the host, port and firewall; raise HYBRID_MEMORY_CONNECT_TIMEOUT on a slow network")
    if isinstance(exc, OSError):
        return (f"PostgreSQL at {where} is down: nothing accepts connections there ({why(exc)})",
                "start PostgreSQL, or set DATABASE_URL to where it runs")
    return f"PostgreSQL at {where} failed ({why(exc)})", "see the error above; check DATABASE_URL"


def latest_migration() -> int:
    return max((version for version, _, _ in migrations()), default=0)


def stored_schema_version(config: HybridConfig) -> int:
    """The namespace's schema version in PostgreSQL (0: never created); a CliError says what is wrong."""
    async def version() -> int:
        store = await PostgresStore.probe(config)
        try:
            return await store.schema_version()
        finally:
            await store.close()

    try:
        return run_async(version())
    except Exception as exc:
        cause, fix = pg_problem(exc, config)
        raise CliError(f"{cause}: {fix}") from None


def require_schema(config: HybridConfig) -> None:
    """Refuse to work on a namespace that was never created, instead of silently creating an empty one."""
    if config.mode is Mode.SESSION_ONLY:
        return
    if stored_schema_version(config) == 0:
        raise CliError(f"namespace {config.namespace!r} does not exist in PostgreSQL at "
                       f"{redact_url(config.database_dsn())}: nothing was ever stored there (check --namespace or "
                       "HYBRID_MEMORY_NAMESPACE; `hybrid-memory migrate` creates it)")


@contextmanager
def open_memory(args: argparse.Namespace, *, embedder: Any = None) -> Iterator[HybridMemory]:
    """A started HybridMemory on an existing namespace, closed (and flushed) on the way out."""
    config = load_config(args)
    require_schema(config)
    memory = HybridMemory(config, embedder=embedder)
    try:
        memory.start()
        yield memory
    finally:
        memory.close()
