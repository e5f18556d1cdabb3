"""`hybrid-memory`: the command-line tool (also `python -m langchain_hybrid_memory`).

Settings come from DATABASE_URL, REDIS_URL, REDIS_PASSWORD and HYBRID_MEMORY_<FIELD> (as `HybridConfig.from_env`);
`--namespace` overrides HYBRID_MEMORY_NAMESPACE. Exit codes: 0 ok, 1 failure, 2 usage (bad arguments or
settings). Nothing printed ever contains a password: URLs go through `redact_url`, error texts through `_scrub`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from .config import HybridConfig, Mode, redact_url
from .errors import ConfigurationError, HybridMemoryError, InvalidInputError
from .keys import KeyLayout
from .memory import HybridMemory
from .messages import Context, Message

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
MIN_REDIS = (6, 2)  # ZMSCORE (the append script's id lookup) arrived in Redis 6.2
MIN_POSTGRES = 120000  # plan_cache_mode (set on the engine's pool) arrived in PostgreSQL 12
T = TypeVar("T")


class CliError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# -- settings and secrets --------------------------------------------------------------------------------
def _config(args: argparse.Namespace, **overrides: object) -> HybridConfig:
    env: dict[str, object] = {}
    if not (os.environ.get("DATABASE_URL") or os.environ.get("HYBRID_MEMORY_DATABASE_URL")):
        env["database_url"] = DEFAULT_PG
    if getattr(args, "namespace", None):
        env["namespace"] = args.namespace
    env.update(overrides)
    return HybridConfig.from_env(**env)


def _secrets() -> list[str]:
    """Every password the environment holds, raw and percent-decoded (longest first, so none is half-hidden)."""
    found: set[str] = set()
    for name in ("REDIS_PASSWORD", "HYBRID_MEMORY_REDIS_PASSWORD"):
        if os.environ.get(name):
            found.add(os.environ[name])
    for name in ("DATABASE_URL", "REDIS_URL", "HYBRID_MEMORY_DATABASE_URL", "HYBRID_MEMORY_REDIS_URL"):
        url = os.environ.get(name)
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
        userinfo = url.split("://", 1)[-1].rpartition("@")[0]  # also what urlsplit might have missed
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    return sorted((s for s in found if s), key=len, reverse=True)  # "" would match everywhere


def _scrub(text: str) -> str:
    """`text` without any password from the environment: third-party error texts may quote a DSN."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _why(exc: BaseException) -> str:
    """A short, secret-free reason: the exception type and the first line of its text."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return _scrub(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion, also when called from a running loop (e.g. `main()` in a notebook cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e3
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1e3
    return f"p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"


class _Progress:
    """A one-line live status on a terminal; plain lines otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.tty = label, total, sys.stdout.isatty()

    def update(self, done: int) -> None:
        if self.tty:
            filled = int(30 * done / max(self.total, 1))
            print(f"\r  {self.label:22} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}", end="", flush=True)
        elif done == self.total:
            print(f"  {self.label:22} {done}/{self.total}")

    def close(self) -> None:
        if self.tty:
            print()


# -- connections (doctor and pre-checks use their own short-lived ones, never the engine's pools) -----------
def _redis_client(config: HybridConfig, timeout: float | None = None) -> Any:
    """A plain redis-py client for `config`'s Redis, connecting the way the engine does (password, db)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = config.redis_dsn()
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        from .cache import make_client

        return make_client(config, False, sync=True)  # as the engine does: ask the sentinels for the primary
    kwargs: dict[str, Any] = {"socket_connect_timeout": config.connect_timeout,
                              "socket_timeout": timeout or max(config.redis_timeout, 1.0),
                              "retry": Retry(NoBackoff(), 0)}  # a diagnosis must not hide a failure by retrying
    if config.redis_password is not None:
        kwargs["password"] = config.redis_password.get_secret_value()
    path = url.split("://", 1)[1].split("?", 1)[0]
    if "/" not in path or path.endswith("/"):
        kwargs["db"] = config.redis_db
    return redis.Redis.from_url(url, **kwargs)


def _redis_problem(exc: BaseException, config: HybridConfig) -> tuple[str, str]:
    """(cause, fix) for a failed Redis call."""
    import redis

    where = redact_url(config.redis_dsn())
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        if "NOAUTH" in text or (config.redis_password is None and "@" not in config.redis_dsn()):
            return (f"Redis at {where} requires a password ({_why(exc)})",
                    "set REDIS_PASSWORD, or put the password in REDIS_URL (redis://:PASSWORD@host:port/0)")
        return (f"Redis at {where} refused the password ({_why(exc)})",
                "correct REDIS_PASSWORD or the password in REDIS_URL")
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return (f"Redis at {where} did not answer within {config.connect_timeout:g} s ({_why(exc)})",
                "check the host, port and firewall; raise HYBRID_MEMORY_CONNECT_TIMEOUT on a slow network")
    if isinstance(exc, redis.ConnectionError | OSError):
        return (f"Redis at {where} is down: nothing accepts connections there ({_why(exc)})",
                "start Redis (redis-server), or set REDIS_URL to where it runs")
    return f"Redis at {where} failed ({_why(exc)})", "see the error above; check REDIS_URL"


def _pg_problem(exc: BaseException, config: HybridConfig) -> tuple[str, str]:
    """(cause, fix) for a failed PostgreSQL connection."""
    import asyncpg

    dsn = config.database_dsn() or ""
    where = redact_url(dsn)
    database = urlsplit(dsn).path.lstrip("/") or "(default)"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (f"PostgreSQL at {where} refused the password ({_why(exc)})",
                "correct the password in DATABASE_URL")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (f"PostgreSQL at {where}: database {database!r} does not exist",
                f"create it (createdb {database}), or point DATABASE_URL at an existing database")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return (f"PostgreSQL at {where} refused the login ({_why(exc)})",
                "create the role or allow it in pg_hba.conf, or correct the user in DATABASE_URL")
    if isinstance(exc, TimeoutError):
        return (f"PostgreSQL at {where} did not answer within {config.connect_timeout:g} s",
                "check the host, port and firewall; raise HYBRID_MEMORY_CONNECT_TIMEOUT on a slow network")
    if isinstance(exc, OSError):
        return (f"PostgreSQL at {where} is down: nothing accepts connections there ({_why(exc)})",
                "start PostgreSQL, or set DATABASE_URL to where it runs")
    return f"PostgreSQL at {where} failed ({_why(exc)})", "see the error above; check DATABASE_URL"


async def _pg_connect(config: HybridConfig) -> Any:
    import asyncpg

    return await asyncio.wait_for(asyncpg.connect(config.database_dsn(), timeout=config.connect_timeout),
                                  config.connect_timeout * 2)


async def _schema_version(conn: Any, namespace: str) -> int:
    """The namespace's applied migration version; 0 when it has no schema (namespace is a checked identifier)."""
    if await conn.fetchval("SELECT to_regclass($1)", f'"{namespace}".schema_migrations') is None:
        return 0
    return int(await conn.fetchval(f'SELECT coalesce(max(version), 0) FROM "{namespace}".schema_migrations'))


def _latest_migration() -> int:
    from .store import migrations

    return max((version for version, _, _ in migrations()), default=0)


def _stored_schema_version(config: HybridConfig) -> int:
    """The namespace's schema version in PostgreSQL (0: never created); a CliError says what is wrong."""
    async def version() -> int:
        conn = await _pg_connect(config)
        try:
            return await _schema_version(conn, config.namespace)
        finally:
            await conn.close()

    try:
        return _run_async(version())
    except Exception as exc:
        cause, fix = _pg_problem(exc, config)
        raise CliError(f"{cause}: {fix}") from None


def _require_schema(config: HybridConfig) -> None:
    """Refuse to work on a namespace that was never created, instead of silently creating an empty one."""
    if config.mode is Mode.SESSION_ONLY:
        return

    found = _stored_schema_version(config)
    if found == 0:
        raise CliError(f"namespace {config.namespace!r} does not exist in PostgreSQL at "
                       f"{redact_url(config.database_dsn())}: nothing was ever stored there (check --namespace or "
                       "HYBRID_MEMORY_NAMESPACE; `hybrid-memory migrate` creates it)")


@contextmanager
def _memory(args: argparse.Namespace, **overrides: object) -> Iterator[HybridMemory]:
    """A started HybridMemory on an existing namespace, closed (and flushed) on the way out."""
    config = _config(args, **overrides)
    _require_schema(config)
    memory = HybridMemory(config)
    try:
        memory.start()
        yield memory
    finally:
        memory.close()


def _reachable(config: HybridConfig) -> str | None:
    """None if both configured servers answer, else why not."""
    try:
        client = _redis_client(config, timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"Redis at {redact_url(config.redis_dsn())} does not answer ({type(exc).__name__})"

    async def pg() -> None:
        conn = await _pg_connect(config)
        await conn.close()

    try:
        _run_async(pg())
    except Exception as exc:
        return f"PostgreSQL at {redact_url(config.database_dsn())} does not answer ({type(exc).__name__})"
    return None


# -- demo ------------------------------------------------------------------------------------------------
class _Chat:
    """The demo's assistant: OpenAI when OPENAI_API_KEY is set, else an offline stand-in (labelled)."""

    def __init__(self) -> None:
        self.client: Any = None
        if os.environ.get("OPENAI_API_KEY"):
            from openai import OpenAI

            self.client = OpenAI(timeout=30, max_retries=1)
        self.label = "OpenAI gpt-4o-mini" if self.client else "offline model (no OPENAI_API_KEY: scripted replies)"

    def reply(self, context: Context, question: str) -> str:
        if self.client is None:
            return f"[offline] I see {len(context.messages)} recent messages" + (
                " and a summary of earlier ones." if context.summary else ".")
        msgs: list[dict[str, str]] = []
        if context.summary:
            msgs.append({"role": "system", "content": f"Summary of the earlier conversation: {context.summary}"})
        for m in context.messages:
            role = "assistant" if m.role in ("ai", "assistant") else "user"
            msgs.append({"role": role, "content": str(m.content)})
        msgs.append({"role": "user", "content": question})
        out = self.client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=80)
        return str(out.choices[0].message.content or "")


QUESTIONS = ["My name is Ada and I am planning a trip to Lisbon.", "What should I pack for March?",
             "I prefer trains to planes.", "Remind me what my name is?", "Which city am I going to?"]


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job in one command: a conversation on the hybrid store, with a live failover."""
    from .embedded import EmbeddedServices
    from .summarizers import OfflineSummarizer, default_summarizer

    services: EmbeddedServices | None = None
    ns = getattr(args, "namespace", None) or os.environ.get("HYBRID_MEMORY_NAMESPACE") or "hybrid_memory_demo"
    base = {"namespace": ns, "enable_auto_summarize": True, "max_session_messages": 10,
            "summarize_chunk_size": 10, "health_check_interval": 0.2, "redis_timeout": 0.3}
    why = "DATABASE_URL / REDIS_URL are not set"
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        config = HybridConfig.from_env(**base)
        why = _reachable(config) or ""
    if why:
        print(f"{why}: starting embedded PostgreSQL and Redis (extra 'embedded') under {args.data_dir or 'a temp dir'}")
        services = EmbeddedServices(args.data_dir or tempfile.mkdtemp(prefix="hybrid-memory-demo-")).start()
        config = HybridConfig(database_url=services.database_url, redis_url=services.redis_url, **base)
    chat = _Chat()
    summarizer = default_summarizer("gpt-4o-mini", 30) if chat.client else OfflineSummarizer()
    print(f"PostgreSQL  {redact_url(config.database_dsn())}\nRedis       {redact_url(config.redis_dsn())}")
    print(f"chat model  {chat.label}\nsummaries   {type(summarizer).__name__}"
          f"{' (offline, labelled in the text)' if isinstance(summarizer, OfflineSummarizer) else ''}\n")
    session = f"demo-{uuid.uuid4().hex[:8]}"
    try:
        with HybridMemory(config, summarizer=summarizer) as memory:
            writes: list[float] = []
            hot: list[float] = []
            bar = _Progress("conversation", args.turns)
            for turn in range(args.turns):
                question = QUESTIONS[turn % len(QUESTIONS)] + f" (turn {turn + 1})"
                t0 = time.perf_counter()
                context = memory.get_context(session)
                if turn:  # the first read of a new session asks PostgreSQL: it is not a hot read
                    hot.append(time.perf_counter() - t0)
                answer = chat.reply(context, question)
                t0 = time.perf_counter()
                memory.add_messages(session, [Message("human", question), Message("ai", answer)])
                writes.append(time.perf_counter() - t0)
                bar.update(turn + 1)
            bar.close()
            memory.flush()
            memory.wait_for_summaries(60)
            cold: list[float] = []
            for _ in range(5):
                memory.invalidate_session(session)
                t0 = time.perf_counter()
                memory.get_context(session)
                cold.append(time.perf_counter() - t0)
            context = memory.get_context(session)
            print(f"  write, 2 messages (acknowledged by Redis)  {_ms(writes)}")
            print(f"  context read, hot (one Redis round trip)   {_ms(hot)}")
            print(f"  context read, cold (PostgreSQL, refills)   {_ms(cold)}")
            print(f"  persisted in PostgreSQL                    {len(memory.get_messages(session))} messages")
            print(f"  summaries stored                           {len(memory.get_summaries(session))}")
            print(f"  context view                               summary + {len(context.messages)} messages")
            summary = (context.summary or "-").splitlines()
            print("  latest summary                             " + summary[0][:70])
            for line in summary[1:][-3:]:
                print(f"                                             {line[:70]}")
            if services is not None:
                _failover_act(memory, services, session)
            else:
                print("\n  (failover act skipped: it kills Redis, which is only done to the embedded one)")
            stats = memory.get_cache_stats()
            print(f"\n  cache hit rate {stats.hit_rate:.1f}% ({stats.hits} hits, {stats.misses} misses), "
                  f"Redis {stats.redis_memory_mb or 0:.2f} MB, backlog {stats.backlog}")
            if not args.keep:
                memory.clear_session(session)
    finally:
        if services is not None:
            services.close()
    return 0


def _failover_act(memory: HybridMemory, services: Any, session: str) -> None:
    print("\nfailover: Redis is killed mid-conversation")
    services.redis.stop()
    t0 = time.perf_counter()
    memory.add_messages(session, [Message("human", "Are you still there?"), Message("ai", "Yes: via PostgreSQL.")])
    ctx = memory.get_context(session)
    print(f"  conversation goes on: write + read in {(time.perf_counter() - t0) * 1e3:.1f} ms, "
          f"{len(ctx.messages)} messages in view, redis_up={memory.redis_available}")
    services.redis.start()
    deadline = time.monotonic() + 10
    while not memory.redis_available and time.monotonic() < deadline:
        time.sleep(0.05)
    memory.get_context(session)
    t0 = time.perf_counter()
    memory.get_context(session)
    print(f"  Redis is back (found by the health check): cache warm again, hot read "
          f"{(time.perf_counter() - t0) * 1e3:.3f} ms")


# -- doctor ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Check:
    """One line of `doctor`: ok, FAIL (with the fix) or skip (a server it needs is down)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<16} {self.detail}"
        return _scrub(f"{text}  -> fix: {self.fix}" if self.fix else text)


def _timing(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1e3:.2f} ms, max {max(samples) * 1e3:.2f} ms"


def _redis_checks(config: HybridConfig) -> Iterator[Check]:
    where = redact_url(config.redis_dsn())
    rest = ["redis version", "redis latency", "redis eviction"] + (["outbox"] if config.mode is Mode.HYBRID else [])
    client = _redis_client(config)
    try:
        try:
            client.ping()
            info = client.info()
        except Exception as exc:
            cause, fix = _redis_problem(exc, config)
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
        cause, fix = _redis_problem(exc, config)
        yield Check("redis", "FAIL", cause, fix)
    finally:
        client.close()


def _eviction_check(info: dict[str, Any]) -> Check:
    policy = str(info.get("maxmemory_policy", "?"))
    limit = int(info.get("maxmemory", 0) or 0)
    used = float(info.get("used_memory", 0) or 0) / 2**20
    cap = f"{limit / 2**20:.0f} MB" if limit else "unlimited"
    if limit and policy.startswith("allkeys"):
        # Outbox streams have no TTL: under allkeys-* Redis may evict acknowledged writes before they are persisted.
        return Check("redis eviction", "FAIL",
                     f"maxmemory {cap} with policy {policy}: Redis may evict the write-behind outbox "
                     "(acknowledged writes not yet in PostgreSQL)",
                     "CONFIG SET maxmemory-policy volatile-lru (evicts only cached windows, which have a TTL)")
    return Check("redis eviction", "ok", f"{used:.1f} MB used of {cap}, policy {policy}: the outbox is never evicted")


def _outbox_check(config: HybridConfig, cluster: bool, client: Any) -> Check:
    """How many acknowledged writes wait in the namespace's outbox streams, and how old the oldest is."""
    if cluster:  # the streams live on several nodes: use the engine's cluster client, which routes per slot
        from .cache import make_client

        client = make_client(config, True, sync=True)
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
            client.close()
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


async def _pg_checks(config: HybridConfig) -> list[Check]:
    rest = ["postgres version", "postgres latency", "schema"]
    try:
        conn = await _pg_connect(config)
    except Exception as exc:
        cause, fix = _pg_problem(exc, config)
        return [Check("postgres", "FAIL", cause, fix)] + [Check(n, "skip", "PostgreSQL is down") for n in rest]
    out: list[Check] = []
    try:
        user, database, number, version = await conn.fetchrow(
            "SELECT current_user, current_database(), current_setting('server_version_num')::int,"
            " current_setting('server_version')")
        out.append(Check("postgres", "ok", f"PostgreSQL at {redact_url(config.database_dsn())} answers "
                                           f"(database {database}, user {user})"))
        version = str(version).split()[0]
        if number < MIN_POSTGRES:
            out.append(Check("postgres version", "FAIL", f"PostgreSQL {version} is too old: 12 or newer is needed",
                             "upgrade PostgreSQL (15+ recommended)"))
        else:
            out.append(Check("postgres version", "ok", f"PostgreSQL {version} (12 or newer needed)"))
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            await conn.fetchval("SELECT 1")
            samples.append(time.perf_counter() - t0)
        budget = config.pg_timeout
        if max(samples) > budget / 2:
            out.append(Check("postgres latency", "FAIL",
                             f"{_timing(samples)} over 20 queries: close to pg_timeout ({budget:g} s)",
                             "run PostgreSQL closer to the app, or raise HYBRID_MEMORY_PG_TIMEOUT"))
        else:
            out.append(Check("postgres latency", "ok", f"{_timing(samples)} over 20 queries (pg_timeout {budget:g} s)"))
        out.append(await _schema_check(conn, config, str(user), str(database)))
    except Exception as exc:
        cause, fix = _pg_problem(exc, config)
        out.append(Check("postgres", "FAIL", cause, fix))
    finally:
        await conn.close()
    return out


async def _schema_check(conn: Any, config: HybridConfig, user: str, database: str) -> Check:
    ns = config.namespace
    found, latest = await _schema_version(conn, ns), _latest_migration()
    if found == 0:
        if not await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')"):
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
    denied = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
        " AND c.relkind = 'r' AND NOT has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') ORDER BY 1", ns)
    if denied:
        tables = ", ".join(r[0] for r in denied)
        return Check("schema", "FAIL", f"user {user} may not read and write {tables} in namespace {ns!r}",
                     f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{ns}" TO "{user}"')
    return Check("schema", "ok", f"namespace {ns!r} at schema version {found} (current)")


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check both servers, their versions, the schema and latency; one line per check."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        print(check.line(), flush=True)

    try:
        config = _config(args)
    except ConfigurationError as exc:
        report(Check("config", "FAIL", str(exc), "correct that setting (HYBRID_MEMORY_<FIELD> or the option)"))
        return _verdict(checks)
    defaulted = not (os.environ.get("DATABASE_URL") or os.environ.get("HYBRID_MEMORY_DATABASE_URL"))
    report(Check("config", "ok", f"mode {config.mode.value}, namespace {config.namespace!r}"
                 + ("; DATABASE_URL is not set: trying the default" if defaulted and
                    config.mode is not Mode.SESSION_ONLY else "")))
    if config.mode is Mode.PERSISTENT:
        report(Check("redis", "skip", "mode persistent does not use Redis"))
    else:
        for check in _redis_checks(config):
            report(check)
    if config.mode is Mode.SESSION_ONLY:
        report(Check("postgres", "skip", "mode session_only does not use PostgreSQL"))
    else:
        for check in _run_async(_pg_checks(config)):
            report(check)
    return _verdict(checks)


def _verdict(checks: list[Check]) -> int:
    failed = [c for c in checks if c.status == "FAIL"]
    if not failed:
        print(f"all {len(checks)} checks passed")
        return EXIT_OK
    causes = "; ".join(c.detail for c in failed)
    print(_scrub(f"hybrid-memory doctor: {len(failed)} failed: {causes}"), file=sys.stderr)
    return EXIT_FAILURE


# -- data commands ---------------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the pending schema migrations (or, with --check, only say whether any are pending)."""
    # PostgreSQL only: migrations must work while Redis is down, and must not wait on it.
    config = _config(args, auto_migrate=False, mode=Mode.PERSISTENT)
    latest = _latest_migration()
    if args.check:
        found = _stored_schema_version(config)
        if found < latest:
            print(f"namespace {config.namespace!r}: schema version {found}, {latest - found} migrations pending "
                  "(run `hybrid-memory migrate`)")
            return EXIT_FAILURE
        print(f"namespace {config.namespace!r}: schema version {found} is current")
        return EXIT_OK
    memory = HybridMemory(config)
    try:
        applied = memory.migrate()
    finally:
        memory.close()
    print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
    print(f"namespace {config.namespace!r}: schema version {latest}")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """The cache stats (`HybridMemory.get_cache_stats()`), as text or JSON."""
    with _memory(args) as memory:
        stats = {"namespace": memory.config.namespace, **memory.get_cache_stats().to_dict()}
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:18} {value}")
        print("(hits, latencies and counters are this process's own; memory, sessions and outbox are the servers')")
    return EXIT_OK


def cmd_warmup(args: argparse.Namespace) -> int:
    """Load the windows of the most recently active sessions into Redis, with a progress bar."""
    with _memory(args) as memory:
        ns = memory.config.namespace
        if memory.config.mode is not Mode.HYBRID:
            raise CliError(f"warmup fills the Redis cache from PostgreSQL: mode {memory.config.mode.value} has "
                           "not both (set HYBRID_MEMORY_MODE=hybrid)")
        if not memory.redis_available:
            raise CliError(f"Redis at {redact_url(memory.config.redis_dsn())} does not answer: nothing warmed "
                           "(run `hybrid-memory doctor`)")
        bars: list[_Progress] = []

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(_Progress("warming sessions", total))
            bars[0].update(done)

        loaded = memory.warmup(args.limit, active_within=args.active_within, on_progress=progress)
        for bar in bars:
            bar.close()
        if not memory.redis_available:
            raise CliError(f"Redis stopped answering during warmup, after {loaded} sessions")
    total = bars[0].total if bars else 0
    print(f"warmed {loaded} of {total} recently active sessions into Redis (namespace {ns!r}); "
          f"{total - loaded} were cached already or are empty")
    return EXIT_OK


def _transcript(memory: HybridMemory, session: str, user: str | None, page: int) -> Iterator[str]:
    """The session's full transcript from PostgreSQL as JSON lines, read page by page (bounded memory)."""
    after: int | None = None
    while True:
        batch = memory.get_messages(session, after_seq=after, limit=page, user_id=user)
        for message in batch:
            # ASCII JSON: exact for any content (lone surrogates, NUL), whatever the terminal's encoding.
            yield json.dumps({"session_id": session, **message.to_dict()}, ensure_ascii=True) + "\n"
        if len(batch) < page:
            return
        after = batch[-1].seq


def cmd_export(args: argparse.Namespace) -> int:
    """Write one session's transcript as JSONL (one message per line, oldest first) to stdout or a file."""
    count = 0
    with _memory(args) as memory:
        ns = memory.config.namespace
        lines = _transcript(memory, args.session, args.user, args.page_size)
        if args.output in (None, "-"):
            for line in lines:
                sys.stdout.write(line)
                count += 1
            sys.stdout.flush()
        else:
            # Written next to the target and renamed: a failed export never leaves a truncated file behind.
            folder = os.path.dirname(os.path.abspath(args.output))
            fd, tmp = tempfile.mkstemp(prefix=".hybrid-memory-export-", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    for line in lines:
                        f.write(line)
                        count += 1
                if count:
                    os.replace(tmp, args.output)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    if not count:
        raise CliError(f"session {args.session!r} has no messages in namespace {ns!r} (check the session id "
                       "and --namespace)")
    where = "" if args.output in (None, "-") else f" to {args.output}"
    print(f"exported {count} messages of session {args.session!r}{where}", file=sys.stderr)
    return EXIT_OK


def cmd_forget_user(args: argparse.Namespace) -> int:
    """Erase every session of a user from Redis and PostgreSQL, after confirmation (unless --yes)."""
    with _memory(args) as memory:
        ns = memory.config.namespace
        known = len(memory.list_sessions(user_id=args.user))
        if not args.yes:
            print(f"Erase user {args.user!r} in namespace {ns!r}: {known} sessions (every message, summary and "
                  "cached window, in Redis and PostgreSQL)? This cannot be undone. [y/N] ",
                  end="", file=sys.stderr, flush=True)
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                raise CliError("not confirmed: nothing was deleted (answer y, or pass --yes)")
        erased = memory.delete_user(args.user)
    print(f"erased {erased} sessions of user {args.user!r} from namespace {ns!r}")
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    """Erase sessions idle longer than --days from Redis and PostgreSQL, after confirmation (unless --yes)."""
    with _memory(args) as memory:
        ns = memory.config.namespace
        if not args.yes:
            print(f"Erase every session of namespace {ns!r} idle for more than {args.days} days (messages, "
                  "summaries and cached windows)? This cannot be undone. [y/N] ", end="", file=sys.stderr,
                  flush=True)
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                raise CliError("not confirmed: nothing was deleted (answer y, or pass --yes)")
        bars: list[_Progress] = []

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(_Progress("erasing idle sessions", total))
            bars[0].update(done)

        erased = memory.purge_idle_sessions(args.days * 86400.0, on_progress=progress)
        for bar in bars:
            bar.close()
    print(f"erased {erased} sessions idle for more than {args.days} days from namespace {ns!r}")
    return EXIT_OK


def cmd_reclaim(args: argparse.Namespace) -> int:
    """Commit outbox entries that dead writers left behind (what every running app's janitor does)."""
    with _memory(args) as memory:
        if memory.config.mode is not Mode.HYBRID:
            raise CliError(f"mode {memory.config.mode.value} has no write-behind outbox")
        if not memory.redis_available:
            raise CliError(f"Redis at {redact_url(memory.config.redis_dsn())} does not answer: nothing reclaimed")
        committed = memory.reclaim_orphans(args.older_than)
        memory.flush(memory.config.pg_timeout)
    print(f"committed {committed} orphaned messages from the outbox to PostgreSQL")
    return EXIT_OK


# -- entry point -----------------------------------------------------------------------------------------
EPILOG = """\
settings: DATABASE_URL, REDIS_URL, REDIS_PASSWORD and HYBRID_MEMORY_<FIELD> (e.g. HYBRID_MEMORY_REDIS_TIMEOUT);
DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/postgres, REDIS_URL to redis://127.0.0.1:6379/0.
exit codes: 0 ok, 1 failure, 2 usage."""


def _parser() -> argparse.ArgumentParser:
    # --namespace is accepted before and after the command; SUPPRESS keeps the subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--namespace", default=argparse.SUPPRESS,
                        help="Redis key prefix and PostgreSQL schema (default: HYBRID_MEMORY_NAMESPACE or "
                             "hybrid_memory)")
    parser = argparse.ArgumentParser(prog="hybrid-memory", description=__doc__.splitlines()[0] if __doc__ else None,
                                     epilog=EPILOG, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    demo = command("demo", cmd_demo, "run a scripted conversation and print what happened")
    demo.add_argument("--turns", type=int, default=30)
    demo.add_argument("--data-dir", help="where the embedded servers keep their data (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="keep the demo session afterwards")
    command("doctor", cmd_doctor, "check both servers, versions, schema and latency; say what to fix")
    migrate = command("migrate", cmd_migrate, "apply schema migrations")
    migrate.add_argument("--check", action="store_true", help="only report; exit 1 if migrations are pending")
    stats = command("stats", cmd_stats, "print the cache stats")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    warmup = command("warmup", cmd_warmup, "preload the recently active sessions into Redis")
    warmup.add_argument("--limit", type=_positive, default=1000, help="at most this many sessions (default 1000)")
    warmup.add_argument("--active-within", type=float, metavar="SECONDS",
                        help="only sessions active within this many seconds")
    export = command("export", cmd_export, "write a session's full transcript as JSONL")
    export.add_argument("session", metavar="SESSION")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.add_argument("--user", help="check that the session belongs to this user")
    export.add_argument("--page-size", type=_positive, default=1000, help=argparse.SUPPRESS)
    forget = command("forget-user", cmd_forget_user, "erase every session of a user (asks first)")
    forget.add_argument("user", metavar="USER")
    forget.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    retention = command("retention", cmd_retention, "erase sessions idle for more than --days (asks first)")
    retention.add_argument("--days", type=float, required=True, help="idle for more than this many days")
    retention.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    reclaim = command("reclaim", cmd_reclaim, "commit outbox entries left behind by dead writers")
    reclaim.add_argument("--older-than", type=float, metavar="SECONDS",
                         help="entries older than this (default: reclaim_after)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse's usage errors included, so it never exits itself)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"hybrid-memory: {_scrub(str(exc))}", file=sys.stderr)
        return exc.code
    except (ConfigurationError, InvalidInputError) as exc:
        print(f"hybrid-memory: {_scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except HybridMemoryError as exc:
        print(f"hybrid-memory: {_scrub(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # e.g. `export ... | head`: the reader left; do not print a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("hybrid-memory: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        print(_scrub(f"hybrid-memory: unexpected error\n{traceback.format_exc()}"), file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
