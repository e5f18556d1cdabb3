"""Memory for LangChain 1.x agents (`langchain.agents.create_agent`); needs the `agents` extra.

`HybridMemoryMiddleware` loads summary + window before a run and persists what the run added.
`HybridSummarizer` plugs into `SummarizationMiddleware(summarizer=...)` and hands the summary to the engine.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.summarization import DEFAULT_SUMMARY_PROMPT
from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AnyMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    get_buffer_string,
)
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.config import run_in_executor
from langgraph.config import get_config
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.runtime import Runtime

from ._lc_convert import DEFAULT_SUMMARY_TEMPLATE, build_view, engine_id, is_summary_message, to_engine_batch
from .memory import HybridMemory
from .messages import Context, Message
from .summarizers import transcript

log = logging.getLogger("langchain_hybrid_memory")

STATE_KEY = "hybrid_memory"  # the private state key below
RECALL_HEADER = "Earlier in this conversation (found for the latest message):"
RECALL_SOURCE = "hybrid_memory_recall"  # marks the recall note (additional_kwargs["lc_source"])
_CONFIG_KEY_RUNTIME = "__pregel_runtime"  # where LangGraph keeps the Runtime in a run's config


class HybridMemoryState(AgentState[Any]):
    """Agent state plus the middleware's private bookkeeping (never in the agent's input or output)."""

    # {"session_id": str, "last_id": str | None}: the last state message known to be in the engine.
    hybrid_memory: NotRequired[Annotated[dict[str, Any], PrivateStateAttr]]


def _lookup(source: Any, key: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def resolve_conversation(*, session_id: str | None, user_id: str | None, session_key: str, user_key: str,
                         runtime: Runtime[Any] | None, config: RunnableConfig | None) -> tuple[str, str | None]:
    """The (session id, user id) of the current run.

    Session: the fixed `session_id`, else `runtime.context[session_key]`, else the run's `thread_id`.
    User: the fixed `user_id`, else `runtime.context[user_key]`.
    """
    configurable: Mapping[str, Any] = (config or {}).get("configurable") or {}
    if runtime is None:
        runtime = configurable.get(_CONFIG_KEY_RUNTIME)
    context = runtime.context if runtime is not None else None
    sid = session_id or _lookup(context, session_key)
    if sid is None:
        info = runtime.execution_info if runtime is not None else None
        sid = (info.thread_id if info is not None else None) or configurable.get("thread_id")
    if sid is None:
        raise ValueError(
            "hybrid memory needs a conversation id: run the agent with "
            "config={'configurable': {'thread_id': ...}} or a context carrying "
            f"{session_key!r}, or pass session_id= to the middleware")
    uid = user_id or _lookup(context, user_key)
    return str(sid), (str(uid) if uid is not None else None)


def _current_config() -> RunnableConfig | None:
    # Hooks get the Runtime but not the config; the thread id lives in the config.
    try:
        return get_config()
    except RuntimeError:  # called outside a graph run
        return None


class HybridMemoryMiddleware(AgentMiddleware[HybridMemoryState, Any, Any]):
    """Gives a `create_agent` agent the conversation's memory from `HybridMemory`.

    Before the run it loads the summary + recent window of the conversation (the session is the fixed
    `session_id`, else `context[session_key]` if the runtime context has it, else the `thread_id` of the
    config; the user likewise from `user_id` or `context[user_key]`) and puts it before the new input.
    It persists new messages through the engine (write-behind) before each model call and after the run, so
    a summarizer always finds what it summarizes in the engine, and a failed run keeps what it said so far.
    It never deletes anything from the engine: when `SummarizationMiddleware` compacts the agent state, the
    transcript keeps every message, and the compacted state's summary message is not stored as a turn.

    Without a checkpointer (replacing one): the engine is the memory. Each run starts from summary + window,
    on any process, and the state of a run is thrown away after it.

    With a checkpointer (combining): the checkpoint holds the thread's working state, the engine holds the
    durable transcript. The window is loaded only into a thread that does not have it yet (a new thread, or one
    whose checkpoint was lost); after that the checkpoint is the view and the middleware only persists.
    Messages already in the state (same id) are never loaded twice.

    Put it before `SummarizationMiddleware` in `middleware=[...]`, so messages are persisted before they are
    summarized. One thread should map to one session.

    With `recall=True`, each model call also gets the conversation's stored messages that best match the latest
    user message and that the request does not hold (summarized, or long gone), within `recall_max_tokens`
    (default: the engine's), as one system message after the summary. It is part of that request only, never
    of the state or the transcript.
    """

    state_schema = HybridMemoryState

    def __init__(self, memory: HybridMemory, *, session_id: str | None = None, user_id: str | None = None,
                 session_key: str = "session_id", user_key: str = "user_id",
                 summary_template: str = DEFAULT_SUMMARY_TEMPLATE, recall: bool = False,
                 recall_max_tokens: int | None = None, recall_header: str = RECALL_HEADER) -> None:
        super().__init__()
        self.recall = recall
        self.recall_max_tokens = recall_max_tokens
        self.recall_header = recall_header
        self.memory = memory
        self.session_id = session_id
        self.user_id = user_id
        self.session_key = session_key
        self.user_key = user_key
        self.summary_template = summary_template

    def _conversation(self, runtime: Runtime[Any]) -> tuple[str, str | None]:
        return resolve_conversation(session_id=self.session_id, user_id=self.user_id, session_key=self.session_key,
                                    user_key=self.user_key, runtime=runtime, config=_current_config())

    # -- load ------------------------------------------------------------------------------------------
    @staticmethod
    def _loaded(state: HybridMemoryState, sid: str) -> bool:
        mark = state.get("hybrid_memory")
        return mark is not None and mark.get("session_id") == sid

    def _load_update(self, state: HybridMemoryState, sid: str, ctx: Context) -> dict[str, Any]:
        view = build_view(ctx, self.summary_template, engine_ids=True)
        current = list(state["messages"])
        present = {m.id for m in current}
        history = [m for m in view if m.id not in present]
        merged = history + current
        # The watermark: the end of the longest prefix already in the engine. Everything after it is persisted.
        known = {m.id for m in view}
        last_id: str | None = None
        for m in merged:
            if m.id not in known:
                break
            last_id = m.id
        update: dict[str, Any] = {STATE_KEY: {"session_id": sid, "last_id": last_id}}
        if history:
            # The new input is already in the state: rebuild it so history comes first.
            update["messages"] = [RemoveMessage(id=REMOVE_ALL_MESSAGES), *history, *current]
        return update

    def before_agent(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        sid, uid = self._conversation(runtime)
        if self._loaded(state, sid):
            return None
        return self._load_update(state, sid, self.memory.get_context(sid, user_id=uid))

    async def abefore_agent(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        sid, uid = self._conversation(runtime)
        if self._loaded(state, sid):
            return None
        return self._load_update(state, sid, await self.memory.aget_context(sid, user_id=uid))

    # -- persist ---------------------------------------------------------------------------------------
    @staticmethod
    def _unsaved(state: HybridMemoryState) -> tuple[list[BaseMessage], dict[str, Any]]:
        msgs = state["messages"]
        mark = dict(state.get("hybrid_memory") or {})
        start = 0
        last = mark.get("last_id")
        if last is not None:
            for i in range(len(msgs) - 1, -1, -1):
                if msgs[i].id == last:
                    start = i + 1
                    break
            # Not found: SummarizationMiddleware removed it. Re-adding the compacted (short) state is harmless:
            # message ids make the engine's writes idempotent.
        new: list[BaseMessage] = [m for m in msgs[start:] if not is_summary_message(m)]
        if msgs:
            mark["last_id"] = msgs[-1].id
        return new, mark

    def _persist(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        new, mark = self._unsaved(state)
        if not new:
            return None
        sid, uid = self._conversation(runtime)
        self.memory.add_messages(sid, to_engine_batch(new), user_id=uid)
        return {STATE_KEY: {**mark, "session_id": sid}}

    async def _apersist(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        new, mark = self._unsaved(state)
        if not new:
            return None
        sid, uid = self._conversation(runtime)
        await self.memory.aadd_messages(sid, to_engine_batch(new), user_id=uid)
        return {STATE_KEY: {**mark, "session_id": sid}}

    def before_model(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        return self._persist(state, runtime)

    async def abefore_model(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        return await self._apersist(state, runtime)

    def after_agent(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        return self._persist(state, runtime)

    async def aafter_agent(self, state: HybridMemoryState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        return await self._apersist(state, runtime)

    # -- recall ----------------------------------------------------------------------------------------
    @staticmethod
    def _question(request: ModelRequest[Any]) -> str | None:
        for m in reversed(request.messages):
            if isinstance(m, HumanMessage):
                text = m.text if isinstance(m.text, str) else str(m.text)
                return text[:4000] or None
        return None

    def _with_recalled(self, request: ModelRequest[Any], recalled: list[Message]) -> ModelRequest[Any]:
        if not recalled:
            return request
        note = SystemMessage(f"{self.recall_header}\n{transcript(recalled)}",
                             additional_kwargs={"lc_source": RECALL_SOURCE})
        msgs = list(request.messages)
        at = 1 if msgs and is_summary_message(msgs[0]) else 0
        return request.override(messages=[*msgs[:at], note, *msgs[at:]])

    def _recall_args(self, request: ModelRequest[Any]) -> tuple[str, str | None, str, set[str]] | None:
        query = self._question(request) if self.recall else None
        if query is None:
            return None
        sid, uid = self._conversation(request.runtime)
        return sid, uid, query, {engine_id(m.id) for m in request.messages if m.id is not None}

    def wrap_model_call(self, request: ModelRequest[Any],
                        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]) -> Any:
        args = self._recall_args(request)
        if args is None:
            return handler(request)
        sid, uid, query, shown = args
        found = self.memory.recall(query, session_id=sid, user_id=uid, exclude_ids=shown,
                                   max_tokens=self.recall_max_tokens)
        return handler(self._with_recalled(request, found))

    async def awrap_model_call(self, request: ModelRequest[Any],
                               handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]) -> Any:
        args = self._recall_args(request)
        if args is None:
            return await handler(request)
        sid, uid, query, shown = args
        found = await self.memory.arecall(query, session_id=sid, user_id=uid, exclude_ids=shown,
                                          max_tokens=self.recall_max_tokens)
        return await handler(self._with_recalled(request, found))


# -- summaries --------------------------------------------------------------------------------------------
SummarizeFn = (
    BaseChatModel
    | Runnable[list[AnyMessage], str]
    | Callable[[list[AnyMessage]], str]
    | Callable[[list[AnyMessage]], Awaitable[str]]
)


@dataclass(frozen=True, slots=True)
class SummaryRecord:
    """A summary the engine should keep: it covers the session up to `upto_message_id` (an engine id)."""

    session_id: str
    user_id: str | None
    summary: str
    upto_message_id: str | None


class HybridSummarizer(Runnable[list[AnyMessage], str]):
    """Summary writer for `SummarizationMiddleware(model, summarizer=HybridSummarizer(memory, summarize))`.

    `summarize` writes the text: a chat model (prompted with `prompt`), a Runnable, or a sync/async function
    of the messages. The summary goes back to `SummarizationMiddleware` (which compacts the agent state) and
    to the engine, for the run's session (resolved like `HybridMemoryMiddleware` does), so that every later
    view of the session (`get_context`, `HybridChatMessageHistory`, a fresh agent run) carries it.

    The engine stores it with `HybridMemory.save_summary(session_id, summary, *, upto_message_id, user_id)`
    as the session's next summary, covering everything after the previous one up to the last summarized
    message (the engine's own auto-summarization writes its summaries itself).
    """

    def __init__(self, memory: HybridMemory, summarize: SummarizeFn, *, session_id: str | None = None,
                 user_id: str | None = None, session_key: str = "session_id", user_key: str = "user_id",
                 prompt: str = DEFAULT_SUMMARY_PROMPT) -> None:
        self.memory = memory
        self.summarize = summarize
        self.session_id = session_id
        self.user_id = user_id
        self.session_key = session_key
        self.user_key = user_key
        self.prompt = prompt

    def _prompt(self, messages: list[AnyMessage]) -> str:
        return self.prompt.format(messages=get_buffer_string(messages, format="xml")).rstrip()

    def _record(self, messages: list[AnyMessage], summary: Any, config: RunnableConfig) -> SummaryRecord:
        if not isinstance(summary, str):
            raise TypeError(f"the summarizer must return a str, got {type(summary).__name__}")
        sid, uid = resolve_conversation(session_id=self.session_id, user_id=self.user_id,
                                        session_key=self.session_key, user_key=self.user_key, runtime=None,
                                        config=config)
        last = messages[-1].id if messages else None
        return SummaryRecord(sid, uid, summary.strip(), engine_id(last) if last is not None else None)

    def invoke(self, input: list[AnyMessage], config: RunnableConfig | None = None, **kwargs: Any) -> str:
        config = ensure_config(config)
        fn = self.summarize
        if isinstance(fn, BaseChatModel):
            summary: Any = fn.invoke(self._prompt(input), config).text
        elif isinstance(fn, Runnable):
            summary = fn.invoke(input, config)
        else:
            summary = fn(input)
            if inspect.isawaitable(summary):
                close = getattr(summary, "close", None)
                if close is not None:
                    close()
                raise TypeError("an async summarize function needs async invocation (ainvoke)")
        record = self._record(input, summary, config)
        self.save(record)
        return record.summary

    async def ainvoke(self, input: list[AnyMessage], config: RunnableConfig | None = None, **kwargs: Any) -> str:
        config = ensure_config(config)
        fn = self.summarize
        if isinstance(fn, BaseChatModel):
            summary: Any = (await fn.ainvoke(self._prompt(input), config)).text
        elif isinstance(fn, Runnable):
            summary = await fn.ainvoke(input, config)
        elif inspect.iscoroutinefunction(fn):
            summary = await fn(input)
        else:
            # A sync function may block (a local model, an HTTP call): keep it off the event loop.
            summary = await run_in_executor(config, fn, input)
            if inspect.isawaitable(summary):
                summary = await summary
        record = self._record(input, summary, config)
        await self.asave(record)
        return record.summary

    # Where the engine stores the summary (see the class docstring).
    def save(self, record: SummaryRecord) -> bool:
        """Persist `record` through the engine as the session's next summary."""
        if record.upto_message_id is None:
            return self._unplaceable()
        return self.memory.save_summary(record.session_id, record.summary, upto_message_id=record.upto_message_id,
                                        user_id=record.user_id, model="langchain-summarization-middleware")

    async def asave(self, record: SummaryRecord) -> bool:
        if record.upto_message_id is None:
            return self._unplaceable()
        return await self.memory.asave_summary(
            record.session_id, record.summary, upto_message_id=record.upto_message_id, user_id=record.user_id,
            model="langchain-summarization-middleware")

    _warned = False

    def _unplaceable(self) -> bool:
        if not self._warned:
            self._warned = True
            log.warning("hybrid-memory: the summarized messages carry no id, so the summary cannot be placed "
                        "in the engine; it stays in the agent state only")
        return False
