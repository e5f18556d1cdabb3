"""Summaries: when one is due, the worker that makes them off the request path, and the summary operations of
the API (list, store one made elsewhere, make the due ones now, the per-session switch).

When `max_session_messages + summarize_chunk_size` or more messages follow a session's latest summary, the
oldest `summarize_chunk_size` of them (never ending between an AI tool call and its results) are summarized
together with the previous summary, and the result is stored as the next row of `summaries`. The context view
is then "summary + every message after it": no gap, no overlap. One process at a time per session (a lease
in PostgreSQL that expires), and the insert only succeeds if the previous summary is still the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cache import CacheDown, RedisCache
from .config import HybridConfig
from .errors import HybridMemoryError, InvalidMessageError, StorageUnavailableError
from .messages import Message, decode
from .outbox import WriteBehind
from .stats import Stats
from .store import PostgresStore, StoreDown
from .summarizers import Summarizer, SummaryRequest, TokenCounter, default_token_counter, prompt_for

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("langchain_hybrid_memory")

TOOL_ROLES = frozenset({"tool", "function"})


class LeaseBusy(Exception):
    """Another process holds the session's summarization lease."""


def chunk_end(roles: list[str], size: int) -> int:
    """How many of the leading messages to summarize: `size`, extended so tool results stay with their call."""
    end = min(size, len(roles))
    while end < len(roles) and roles[end] in TOOL_ROLES:
        end += 1
    return end


class SummaryWorker:
    def __init__(self, config: HybridConfig, store: PostgresStore, wb: WriteBehind, stats: Stats,
                 summarizer: Summarizer, count_tokens: TokenCounter, cache: Callable[[], RedisCache | None]) -> None:
        self.config = config
        self.store = store
        self.wb = wb
        self.stats = stats
        self.summarizer = summarizer
        self.count_tokens = count_tokens
        self._cache = cache  # the engine loop's Redis client while Redis is up
        self._owner = f"hm-{uuid.uuid4().hex[:12]}"
        self._due: dict[str, None] = {}  # insertion-ordered set
        self._retry: dict[str, tuple[int, float]] = {}  # session -> (failures, retry at, monotonic)
        self._busy: str | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def queued(self) -> int:
        return len(self._due) + len(self._retry) + (1 if self._busy else 0)

    def request(self, session_id: str) -> None:
        """Note that `session_id` may be due (engine loop only); cheap and idempotent."""
        if session_id in self._due or session_id in self._retry:
            return  # (a session being summarized may be queued again: the check after it is cheap)
        self._due[session_id] = None
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hybrid-memory-summarizer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)  # bounded: a summarizer call may ignore one cancel

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no summary is due or running (sessions waiting to retry after a failure count as busy)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for sid, (_, at) in list(self._retry.items()):
                if at <= now:
                    del self._retry[sid]
                    self._due[sid] = None
            if not self._due:
                if not self._retry:
                    self._idle.set()
                nxt = min((at for _, at in self._retry.values()), default=None)
                self._wake.clear()
                timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            sid = next(iter(self._due))
            del self._due[sid]
            self._busy = sid
            try:
                await self.summarize(sid)
                self._retry.pop(sid, None)
            except asyncio.CancelledError:
                raise
            except LeaseBusy:
                # Another process is summarizing it: look again soon, it may stop short of our newest messages.
                self._retry[sid] = (self._retry.get(sid, (0, 0.0))[0], time.monotonic() + 1.0)
            except Exception as exc:  # the LLM, the network, anything: keep raw messages, retry later
                failures = self._retry.get(sid, (0, 0.0))[0] + 1
                delay = min(self.config.summary_retry_base * 2 ** (failures - 1), 300.0)
                self._retry[sid] = (failures, time.monotonic() + delay)
                self.stats.summary_failures += 1
                # Type and HTTP status only: an error's text may quote a request header (an API key).
                status = getattr(exc, "status_code", None)
                self.last_error = type(exc).__name__ + (f" (HTTP {status})" if status else "")
                log.warning("hybrid-memory: summarizing a session failed (%s); retrying in %.0fs",
                            type(exc).__name__, delay)
            finally:
                self._busy = None

    async def summarize(self, session_id: str) -> int:
        """Make every summary that is due for `session_id` now; returns how many were stored."""
        cfg = self.config
        made = 0
        lease_s = cfg.summary_timeout * 2 + 10
        await self.wb.settle(session_id)  # every acknowledged message of the session is in PostgreSQL now
        lease = await self.store.lease(session_id, self._owner, lease_s)
        if lease == "busy":
            raise LeaseBusy(session_id)
        if lease != "ok":
            return 0  # the session's switch is off, or it does not exist (any more)
        try:
            while True:
                enabled, upto, text, after, rows = await self.store.summary_state(
                    session_id, cfg.summarize_chunk_size + 64)
                if not enabled or after < cfg.summary_threshold:
                    return made
                end = chunk_end([r[1] for r in rows], cfg.summarize_chunk_size)
                chunk: list[Message] = [decode(seq, body) for seq, _, body, _ in rows[:end]]
                request = SummaryRequest(session_id, text or None, chunk, cfg.summary_max_tokens)
                result = await asyncio.wait_for(self.summarizer.summarize(request), cfg.summary_timeout)
                if not result.text:
                    raise ValueError("the summarizer returned an empty summary")
                system, user = prompt_for(request)
                tokens_in = result.input_tokens or self.count_tokens(system + user)
                tokens_out = result.output_tokens or self.count_tokens(result.text)
                first, last = chunk[0].seq or 0, chunk[-1].seq or 0
                stored = await self.store.add_summary(session_id, upto, first, last, len(chunk), result.text,
                                                      result.model, tokens_in, tokens_out)
                if not stored:
                    return made  # somebody else moved the pointer: their summary stands
                made += 1
                self.stats.summaries += 1
                self.last_error = None
                cache = self._cache()
                if cache is not None:
                    with contextlib.suppress(CacheDown):
                        await cache.set_summary(session_id, last, result.text, len(chunk))
                await self.store.lease(session_id, self._owner, lease_s)  # renew (we hold it: "ok")
        finally:
            with contextlib.suppress(StoreDown):
                await self.store.release(session_id, self._owner)


class SummaryOps:
    """The summary operations of `HybridMemory` (engine loop)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def list(self, sid: str, uid: str | None) -> list[dict[str, Any]]:
        core = self.core
        await core.ensure_started()
        await core.check_user(sid, uid)
        with core.health.store_step():
            return await core.need_store().summaries(sid)

    async def set_enabled(self, sid: str, uid: str | None, enabled: bool) -> None:
        core = self.core
        await core.ensure_started()
        await core.check_user(sid, uid)
        with core.health.store_step():
            await core.need_store().set_summarize(sid, enabled)
        if enabled:
            core.summary_due(sid)

    async def save(self, sid: str, uid: str | None, text: str, upto_id: str, model: str) -> bool:
        """Store a summary made elsewhere as the session's next one (see `HybridMemory.save_summary`)."""
        core = self.core
        await core.ensure_started()
        if not isinstance(text, str) or not text.strip():
            raise InvalidMessageError("summary must be a non-empty str")
        store = core.need_store()
        await core.check_user(sid, uid)
        try:
            with core.health.store_step():
                if core.wb is not None:
                    await core.wb.settle(sid)
                _, upto, _, _, _ = await store.summary_state(sid, 0)
                covered = await store.covered_by(sid, upto, upto_id)
                if covered is None or covered[2] == 0:
                    return False
                last, first, count = covered
                counter = core.token_counter or default_token_counter()
                stored = await store.add_summary(sid, upto, first, last, count, text, model, None, counter(text))
        except CacheDown:
            raise StorageUnavailableError("Redis is unreachable: other writers' pending messages are unknown") \
                from None
        if stored and core.use_cache():
            assert core.cache is not None
            with contextlib.suppress(CacheDown):
                await core.cache.set_summary(sid, last, text, count)
        if stored:
            core.stats.summaries += 1
        return stored

    async def make_due(self, sid: str, uid: str | None) -> int:
        core = self.core
        await core.ensure_started()
        await core.check_user(sid, uid)
        if core.summaries is None:
            raise HybridMemoryError("auto-summarization is off (enable_auto_summarize=False)")
        try:
            with core.health.store_step():
                return await core.summaries.summarize(sid)
        except LeaseBusy:
            return 0  # another process is summarizing this session right now

    async def wait(self, timeout: float | None) -> bool:
        await self.core.ensure_started()
        if self.core.summaries is None:
            return True
        return await self.core.summaries.wait_idle(timeout)
