"""`hybrid-memory doctor`: check both servers, their versions, latency, the schema and the outbox; one line per
check, with the fix for each failure."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import HybridConfig, Mode, redact_url
from ..errors import ConfigurationError
from ..keys import KeyLayout
from ..store import PostgresStore
from .connect import (
    close_redis,
    database_url_set,
    latest_migration,
    load_config,
    pg_problem,
    redis_client,
    redis_problem,
    run_async,
)
from .output import EXIT_FAILURE, EXIT_OK, scrub

MIN_REDIS = (6, 2)  # ZMSCORE (the append script's id lookup) arrived in Redis 6.2
MIN_POSTGRES = 120000  # plan_cache_mode (set on the engine's pool) arrived in PostgreSQL 12


@dataclass(slots=True)
class Check:
    """One line of `doctor`: ok, FAIL (with the fix) or skip (a server it needs is down)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<16} {self.detail}"
        return scrub(f"{text}  -> fix: {self.fix}" if self.fix else text)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check both servers, their versions, the schema and latency; one line per check."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        print(check.line(), flush=True)

    try:
        config = load_config(args)
    except ConfigurationError as exc:
        report(Check("config", "FAIL", str(exc), "correct that setting (HYBRID_MEMORY_<FIELD> or the option)"))
        return _verdict(checks)
    report(Check("config", "ok", f"mode {config.mode.value}, namespace {config.namespace!r}"
                 + ("; DATABASE_URL is not set: trying the default" if not database_url_set() and
                    config.mode is not Mode.SESSION_ONLY else "")))
    if config.mode is Mode.PERSISTENT:
        report(Check("redis", "skip", "mode persistent does not use Redis"))
    else:
        for check in _redis_checks(config):
            report(check)
    if config.mode is Mode.SESSION_ONLY:
        report(Check("postgres", "skip", "mode session_only does not use PostgreSQL"))
    else:
        for check in run_async(_pg_checks(config)):
            report(check)
    return _verdict(checks)


def _verdict(checks: list[Check]) -> int:
    failed = [c for c in checks if c.status == "FAIL"]
    if not failed:
        print(f"all {len(checks)} checks passed")
        return EXIT_OK
    causes = "; ".join(c.detail for c in failed)
    print(scrub(f"hybrid-memory doctor: {len(failed)} failed: {causes}"), file=sys.stderr)
    return EXIT_FAILURE


def _timing(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1e3:.2f} ms, max {max(samples) * 1e3:.2f} ms"


# -- Redis ---------------------------------------------------------------------------------------------------
def _redis_checks(config: HybridConfig) -> Iterator[Check]:
    where = redact_url(config.redis_dsn())
    rest = ["redis version", "redis latency", "redis eviction"] + (["outbox"] if config.mode is Mode.HYBRID else [])
    client = redis_client(config)
    try:
        try:
            client.ping()
            info = client.info()
        except Exception as exc:
            cause, fix = redis_problem(exc, config)
            yield Check("redis", "FAIL", cause, fix)
            yield from (Check(name, "skip", "Redis is down") for name in rest)
            return
        cluster = str(info.get("cluster_enabled", "0")) == "1"
        kind = "cluster" if cluster else info.get("redis_mode", "?")
        yield Check("redis", "ok", f"Redis at {where} answers ({kind}, {info.get('connected_clients', '?')} clients)")
        version = str(info.get("redis_version", "0"))
        parsed = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if parsed < MIN_REDIS:
            yield Check("redis version", "FAIL", f"Redis {version} is too old: the scripts need 6.2 or newer",
                        "upgrade Redis (7.x recommended)")
        else:
            yield Check("redis version", "ok", f"Redis {version} (6.2 or newer needed)")
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            client.ping()
            samples.append(time.perf_counter() - t0)
        budget = config.redis_timeout
        if max(samples) > budget / 2:
            yield Check("redis latency", "FAIL",
                        f"{_timing(samples)} over 20 PINGs: close to redis_timeout ({budget * 1e3:g} ms), so calls "
                        "will time out and fail over to PostgreSQL",
                        "run Redis closer to the app, or raise HYBRID_MEMORY_REDIS_TIMEOUT")
        else:
            yield Check("redis latency", "ok", f"{_timing(samples)} over 20 PINGs (redis_timeout {budget * 1e3:g} ms)")
        yield _eviction_check(info)
        if config.mode is Mode.HYBRID:
            yield _outbox_check(config, cluster, client)
    except Exception as exc:  # the server went away or refused a command halfway through
        cause, fix = redis_problem(exc, config)
        yield Check("redis", "FAIL", cause, fix)
    finally:
        close_redis(client)


def _eviction_check(info: dict[str, Any]) -> Check:
    policy = str(info.get("maxmemory_policy", "?"))
    limit = int(info.get("maxmemory", 0) or 0)
    used = float(info.get("used_memory", 0) or 0) / 2**20
    cap = f"{limit / 2**20:.0f} MB" if limit else "unlimited"
    if limit and policy.startswith("allkeys"):
        # Outbox streams have no TTL: under allkeys-* Redis may evict acknowledged writes before they are persisted,
        # so the engine turns write-behind off (writes wait for the commit).
        return Check("redis eviction", "FAIL",
                     f"maxmemory {cap} with policy {policy}: Redis may evict the write-behind outbox, so writes "
                     "are acknowledged only after the PostgreSQL commit (write-behind off)",
                     "CONFIG SET maxmemory-policy volatile-lru (evicts only cached windows, which have a TTL)")
    return Check("redis eviction", "ok", f"{used:.1f} MB used of {cap}, policy {policy}: the outbox is never evicted")


def _outbox_check(config: HybridConfig, cluster: bool, client: Any) -> Check:
    """How many acknowledged writes wait in the namespace's outbox streams, and how old the oldest is."""
    if cluster:  # the streams live on several nodes: a cluster client routes each to its slot's node
        client = redis_client(config, cluster=True)
    try:
        streams = KeyLayout(config.namespace, config.outbox_shards).all_outboxes()
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            pipe.xrange(stream, "-", "+", count=1)
        out = pipe.execute()
        secs, micros = client.time()
    finally:
        if cluster:
            close_redis(client)
    entries = sum(int(n) for n in out[0::2])
    if not entries:
        return Check("outbox", "ok", "no acknowledged writes waiting for PostgreSQL")
    oldest_ms = min(int(first[0][0].split(b"-")[0]) for first in out[1::2] if first)
    age = max(0.0, int(secs) + int(micros) / 1e6 - oldest_ms / 1000)
    stale = config.reclaim_after + 3 * config.reclaim_interval
    if age > stale:
        return Check("outbox", "FAIL",
                     f"{entries} acknowledged write batches wait in the outbox, the oldest for {age:.0f} s: no "
                     "running process is persisting them (PostgreSQL down, or every writer stopped)",
                     "`hybrid-memory reclaim` commits them now (a running app does it every reclaim_interval)")
    return Check("outbox", "ok", f"{entries} acknowledged write batches waiting for PostgreSQL, the oldest for "
                                 f"{age:.1f} s")


# -- PostgreSQL ----------------------------------------------------------------------------------------------
async def _pg_checks(config: HybridConfig) -> list[Check]:
    rest = ["postgres version", "postgres latency", "schema", "vector search"]
    try:
        store = await PostgresStore.probe(config)
    except Exception as exc:
        cause, fix = pg_problem(exc, config)
        return [Check("postgres", "FAIL", cause, fix)] + [Check(n, "skip", "PostgreSQL is down") for n in rest]
    out: list[Check] = []
    try:
        user, database, number, version = await store.server_info()
        out.append(Check("postgres", "ok", f"PostgreSQL at {redact_url(config.database_dsn())} answers "
                                           f"(database {database}, user {user})"))
        version = version.split()[0]
        if number < MIN_POSTGRES:
            out.append(Check("postgres version", "FAIL", f"PostgreSQL {version} is too old: 12 or newer is needed",
                             "upgrade PostgreSQL (15+ recommended)"))
        else:
            out.append(Check("postgres version", "ok", f"PostgreSQL {version} (12 or newer needed)"))
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            await store.ping()
            samples.append(time.perf_counter() - t0)
        budget = config.pg_timeout
        if max(samples) > budget / 2:
            out.append(Check("postgres latency", "FAIL",
                             f"{_timing(samples)} over 20 queries: close to pg_timeout ({budget:g} s)",
                             "run PostgreSQL closer to the app, or raise HYBRID_MEMORY_PG_TIMEOUT"))
        else:
            out.append(Check("postgres latency", "ok", f"{_timing(samples)} over 20 queries (pg_timeout {budget:g} s)"))
        out.append(await _schema_check(store, config, user, database))
        out.append(await _vector_check(store))
    except Exception as exc:
        cause, fix = pg_problem(exc, config)
        out.append(Check("postgres", "FAIL", cause, fix))
    finally:
        await store.close()
    return out


async def _vector_check(store: PostgresStore) -> Check:
    """What recall's vector search runs on here (informational: exact scoring works everywhere)."""
    installed, available, column = await store.vector_support()
    if installed and column:
        return Check("vector search", "ok", f"pgvector {installed}: a user-wide vector search takes its "
                                            "candidates from an HNSW index")
    if installed:
        return Check("vector search", "ok", f"pgvector {installed}; this namespace gets its vector column at the "
                                            "next migration (until then vectors are scored exactly)")
    if available:
        return Check("vector search", "ok", f"pgvector {available} is available but not installed: vectors are "
                                            "scored exactly (CREATE EXTENSION vector, as a superuser, for HNSW)")
    return Check("vector search", "ok", "no pgvector on this server: vectors are scored exactly over the searched "
                                        "scope")


async def _schema_check(store: PostgresStore, config: HybridConfig, user: str, database: str) -> Check:
    ns = config.namespace
    found, latest = await store.schema_version(), latest_migration()
    if found == 0:
        if not await store.may_create_schema():
            return Check("schema", "FAIL", f"namespace {ns!r} has no schema yet and user {user} may not create one",
                         f'GRANT CREATE ON DATABASE "{database}" TO "{user}" (or run `hybrid-memory migrate` as an '
                         "owner)")
        if not config.auto_migrate:
            return Check("schema", "FAIL", f"namespace {ns!r} has no schema and auto_migrate is off",
                         "run `hybrid-memory migrate`")
        return Check("schema", "ok", f"namespace {ns!r} has no schema yet: the first use creates it (auto_migrate "
                                     "on; `hybrid-memory migrate` does it now)")
    if found < latest:
        return Check("schema", "FAIL", f"namespace {ns!r} is at schema version {found}; this package needs {latest}",
                     "run `hybrid-memory migrate`")
    if found > latest:
        return Check("schema", "FAIL", f"namespace {ns!r} is at schema version {found}, newer than this package "
                                       f"knows ({latest})", "upgrade langchain-hybrid-memory")
    denied = await store.tables_not_writable()
    if denied:
        tables = ", ".join(denied)
        return Check("schema", "FAIL", f"user {user} may not read and write {tables} in namespace {ns!r}",
                     f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{ns}" TO "{user}"')
    return Check("schema", "ok", f"namespace {ns!r} at schema version {found} (current)")
