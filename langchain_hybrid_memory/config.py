"""Configuration: one pydantic model, read from arguments or the environment."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .errors import ConfigurationError

_NAMESPACE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


class Mode(StrEnum):
    """Where messages live: Redis only, PostgreSQL only, or both (Redis window over PostgreSQL)."""

    SESSION_ONLY = "session_only"  # Redis only: fast, nothing survives the TTL
    PERSISTENT = "persistent"  # PostgreSQL only: durable, every read is a query
    HYBRID = "hybrid"  # Redis window over PostgreSQL


def redact_url(url: str | None) -> str:
    """Return `url` with any password replaced by `***` (safe for logs, reprs and errors)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{hostport}" if user else f"***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.password is not None or "password=" in parts.query.lower()
    except ValueError:
        return True  # unparseable: treat as secret


def seconds(value: Any) -> Any:
    """A timedelta as seconds; anything else unchanged (pydantic validates it)."""
    return value.total_seconds() if isinstance(value, timedelta) else value


class HybridConfig(BaseModel):
    """Everything `HybridMemory` needs; secrets are `SecretStr` and never appear in `repr`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Mode.HYBRID
    database_url: SecretStr | None = None
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_password: SecretStr | None = None
    redis_db: int = Field(0, ge=0)
    redis_cluster: bool | None = None  # None: ask the server (INFO cluster) at start
    # Each event loop's connection keeps the latest checkpoint of the threads it wrote or read, under a lease on
    # the thread (RESP3 key tracking; maxmemory-policy noeviction), so a read needs no round trip; another
    # process's write to such a thread first waits until this process lets the lease go (at once, or after
    # `redis_timeout` if it cannot answer). False: every read asks Redis, and no write waits.
    redis_key_tracking: bool = True
    namespace: str = "hybrid_memory"

    max_session_messages: int = Field(30, ge=1, le=10_000)
    session_ttl: float = Field(7200.0, gt=0)
    async_writes: bool = True
    write_behind_delay: float = Field(0.05, ge=0)

    # Auto-summarization: messages that left the window are compressed, chunk by chunk, into a summary.
    enable_auto_summarize: bool = False
    summarize_chunk_size: int = Field(30, ge=2)  # messages beyond the window that trigger the next summary
    summary_max_tokens: int = Field(512, ge=16)  # budget of one summary
    summary_model: str = "gpt-4o-mini"
    summary_timeout: float = Field(60.0, gt=0)  # one summarizer call
    summary_retry_base: float = Field(2.0, gt=0)  # first retry delay after a failure; doubles, capped at 300 s

    # Recall: full-text search over every message, indexed in the background after the commit.
    search_index: bool = True  # run the indexer in this process (False: leave it to others; search still works)
    search_config: str = "english"  # PostgreSQL text search configuration (stemming, stop words)
    recall_max_tokens: int = Field(400, ge=0)  # budget of the messages `get_context(query=...)` brings back
    recall_index_interval: float = Field(0.5, gt=0)  # how often the indexer looks for committed messages
    max_query_chars: int = Field(4000, ge=1)
    embed_timeout: float = Field(30.0, gt=0)  # one embedder call (a search's query, or a batch in the background)
    # A later message this similar to an earlier hit supersedes it ("I moved to Seville" after "I live in
    # Valencia"): it ranks first. Cosine similarity; depends on the embedder (0.5 suits the offline one).
    recall_supersede_similarity: float = Field(0.5, ge=0, le=1)
    recall_cache_mb: int = Field(256, ge=0)  # vectors of searched scopes kept in this process (0: none)

    # Limits on input: refused with a typed error before anything is written.
    max_message_bytes: int = Field(1_000_000, ge=64)
    max_messages_per_add: int = Field(1000, ge=1)
    max_session_id_length: int = Field(256, ge=1, le=4096)

    # Write-behind.
    max_backlog: int = Field(100_000, ge=1)
    persist_batch_size: int = Field(10_000, ge=1)
    # Full batches committed at once, on as many connections: PostgreSQL then uses more than one core for a
    # backlog (about 1.4x the rows/s of one COPY at a time on 2 cores).
    persist_concurrency: int = Field(2, ge=1, le=16)
    outbox_shards: int = Field(64, ge=1, le=16384)
    reclaim_after: float = Field(30.0, gt=0)  # an outbox entry this old belongs to a dead writer
    reclaim_interval: float = Field(5.0, gt=0)
    tombstone_ttl: float = Field(3600.0, gt=0)  # how long a deleted session's id is kept to stop late writes
    # Message ids remembered per session in Redis (PostgreSQL dedupes older retries). Kept under 128 so Redis
    # stores the set compactly (listpack): above that a 1,000-message session's set outweighs its window 10x.
    idempotency_window: int = Field(100, ge=1)

    # Timeouts (every network call has one) and health.
    redis_timeout: float = Field(0.5, gt=0)
    pg_timeout: float = Field(5.0, gt=0)
    connect_timeout: float = Field(3.0, gt=0)
    health_check_interval: float = Field(1.0, gt=0)
    pg_pool_min: int = Field(0, ge=0)  # 0: no reconnect storm (and asyncpg tracebacks) while PostgreSQL is down
    pg_pool_max: int = Field(10, ge=1)
    redis_max_connections: int = Field(64, ge=1)
    auto_migrate: bool = True
    pg_partitions: int = Field(0, ge=0, le=1024)  # >0: hash-partition messages by session (at schema creation)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # pydantic's message echoes input values, which may hold a password: rebuild it without them.
            lines = [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()]
            raise ConfigurationError("; ".join(lines)) from None

    @field_validator("session_ttl", "write_behind_delay", "reclaim_after", mode="before")
    @classmethod
    def _timedelta_ok(cls, v: Any) -> Any:
        return seconds(v)

    @field_validator("namespace")
    @classmethod
    def _namespace_ok(cls, v: str) -> str:
        if not _NAMESPACE_RE.match(v):
            raise ValueError("namespace must match ^[a-z_][a-z0-9_]{0,47}$ (it names a PostgreSQL schema)")
        return v

    @field_validator("search_config")
    @classmethod
    def _search_config_ok(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_.]{0,62}$", v):
            raise ValueError("search_config must name a PostgreSQL text search configuration (e.g. 'english')")
        return v

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url_ok(cls, v: Any) -> Any:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if isinstance(raw, str) and "://" not in raw:
            # A bare host:port is accepted, as redis-cli takes one.
            raw = f"redis://{raw}"
        return raw

    @model_validator(mode="after")
    def _mode_needs(self) -> HybridConfig:
        if self.mode is not Mode.SESSION_ONLY and self.database_url is None:
            raise ValueError(f"mode {self.mode.value!r} needs database_url (or env DATABASE_URL)")
        if self.enable_auto_summarize and self.mode is Mode.SESSION_ONLY:
            raise ValueError("enable_auto_summarize needs PostgreSQL (mode hybrid or persistent)")
        if self.pg_pool_min > self.pg_pool_max:
            raise ValueError("pg_pool_min must not exceed pg_pool_max")
        return self

    @property
    def cache_capacity(self) -> int:
        """Elements cached per session: the window, plus room for what awaits summarization."""
        if not self.enable_auto_summarize:
            return self.max_session_messages
        return self.max_session_messages + 2 * self.summarize_chunk_size

    @property
    def cache_ceiling(self) -> int:
        """Elements cached per session at most: while the summarizer lags, up to two more chunks stay cached
        (beyond that, or with the summarizer down, the context view is read from PostgreSQL)."""
        if not self.enable_auto_summarize:
            return self.max_session_messages
        return self.cache_capacity + 2 * self.summarize_chunk_size

    @property
    def summary_threshold(self) -> int:
        """Messages after the summary that make the next one due (0: auto-summarize off)."""
        if not self.enable_auto_summarize:
            return 0
        return self.max_session_messages + self.summarize_chunk_size

    @classmethod
    def from_env(cls, **overrides: Any) -> HybridConfig:
        """Build from DATABASE_URL, REDIS_URL, REDIS_PASSWORD, HYBRID_MEMORY_* and `overrides`."""
        env: dict[str, Any] = {}
        for key, name in (("database_url", "DATABASE_URL"), ("redis_url", "REDIS_URL"),
                          ("redis_password", "REDIS_PASSWORD")):
            if os.environ.get(name):
                env[key] = os.environ[name]
        for field in cls.model_fields:
            value = os.environ.get(f"HYBRID_MEMORY_{field.upper()}")
            if value is not None:
                env[field] = value
        env.update(overrides)
        return cls(**env)

    def without_secrets(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        """(settings, withheld): every setting but the secrets, and the names of those left out.

        A URL is withheld only when it carries a password; `redis_password` whenever it is set. `from_env`
        fills the withheld ones in again from DATABASE_URL / REDIS_URL / REDIS_PASSWORD.
        """
        settings = self.model_dump(exclude={"database_url", "redis_url", "redis_password"})
        withheld: list[str] = []
        for name, url in (("database_url", self.database_dsn()), ("redis_url", self.redis_dsn())):
            if url and _has_password(url):
                withheld.append(name)
            else:
                settings[name] = url
        if self.redis_password is not None:
            withheld.append("redis_password")
        return settings, tuple(withheld)

    # Plain accessors for the connection code. Secrets are unwrapped only here, in `without_secrets` (to test
    # for a password) and where the Redis client takes `redis_password` (cache/connections.py).
    def database_dsn(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None

    def redis_dsn(self) -> str:
        return self.redis_url.get_secret_value()

    def describe(self) -> dict[str, Any]:
        """A dict safe to print: URLs redacted, passwords omitted."""
        out = self.model_dump(exclude={"database_url", "redis_url", "redis_password"})
        out["mode"] = self.mode.value
        out["database_url"] = redact_url(self.database_dsn())
        out["redis_url"] = redact_url(self.redis_dsn())
        out["redis_password"] = "***" if self.redis_password else None
        return out
