"""Summarizers: how a chunk of old messages becomes (part of) the session's summary.

A summarizer gets a `SummaryRequest` (the previous summary and the next chunk) and returns the new summary:
progressive, so the model never re-reads the whole conversation. Anything fits: the OpenAI client (default,
honours OPENAI_API_KEY / OPENAI_BASE_URL, so any OpenAI-compatible server works), a LangChain chat model, a
LlamaIndex LLM, a plain function, or the offline one used when no key is set.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError
from .messages import Message

TokenCounter = Callable[[str], int]

SYSTEM_PROMPT = (
    "You maintain the running summary of a conversation between a user and an AI assistant. You receive the "
    "summary so far and the next messages. Reply with the updated summary only: keep every fact, name, number, "
    "decision, open question and user preference that later turns may need; drop small talk; write in the "
    "third person; stay under {max_tokens} tokens."
)


@dataclass(slots=True)
class SummaryRequest:
    session_id: str
    previous_summary: str | None
    messages: list[Message]
    max_tokens: int


@dataclass(slots=True)
class SummaryResult:
    text: str
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None


@runtime_checkable
class Summarizer(Protocol):
    """Anything with `async def summarize(request) -> SummaryResult` and a `model` name."""

    model: str

    async def summarize(self, request: SummaryRequest) -> SummaryResult: ...


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content if isinstance(content, list) else [content]:
        if isinstance(block, dict):
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif "type" in block:
                parts.append(f"[{block['type']}]")
        elif isinstance(block, str):
            parts.append(block)
    return " ".join(parts)


def transcript(messages: list[Message]) -> str:
    """Messages as plain lines ("role: text"), tool calls named, for the prompt."""
    lines = []
    for m in messages:
        text = _text_of(m.content)
        calls = m.metadata.get("tool_calls") if isinstance(m.metadata, dict) else None
        if calls:
            names = ", ".join(str(c.get("name") or c.get("function", {}).get("name", "?")) for c in calls
                              if isinstance(c, dict))
            text = f"{text} [calls tools: {names}]".strip()
        lines.append(f"{m.role}: {text}")
    return "\n".join(lines)


def prompt_for(request: SummaryRequest) -> tuple[str, str]:
    """(system, user) prompt texts."""
    prev = request.previous_summary or "(none yet)"
    user = f"Summary so far:\n{prev}\n\nNext messages:\n{transcript(request.messages)}\n\nUpdated summary:"
    return SYSTEM_PROMPT.format(max_tokens=request.max_tokens), user


# OpenAI's reasoning families (o1, o3-mini, o4-mini, gpt-5, gpt-5-mini, gpt-5.1, ...; "openai/o3" through a proxy,
# "ft:o4-mini:..." fine-tuned): they refuse `max_tokens` and any temperature but the default.
_REASONING_MODEL = re.compile(r"(?:^|[/:])(?:o\d+|gpt-5)(?:[-.:_]|$)", re.IGNORECASE)
_STYLE_PARAMS = ("max_tokens", "max_completion_tokens", "temperature")


def is_reasoning_model(model: str) -> bool:
    """True for a name of OpenAI's reasoning families (o-series, gpt-5), which take `max_completion_tokens`."""
    return _REASONING_MODEL.search(model.strip()) is not None


def _refused_param(exc: BaseException, sent: dict[str, Any]) -> str | None:
    """The request parameter a 400 answer refuses, if it is one of the style-dependent ones we sent."""
    if getattr(exc, "status_code", None) != 400:
        return None
    candidates = [p for p in _STYLE_PARAMS if p in sent]
    param = getattr(exc, "param", None)
    if param in candidates:
        return str(param)
    # Some servers leave `param` empty and only name it in the text ("Unrecognized request argument supplied:
    # max_completion_tokens"): look for a whole word, so max_tokens is not found inside max_completion_tokens.
    body = getattr(exc, "body", None)
    text = str(body.get("message") or "") if isinstance(body, dict) else ""
    for name in candidates:
        if re.search(rf"\b{name}\b", text):
            return name
    return None


class OpenAISummarizer:
    """The default: the `openai` async client (any OpenAI-compatible server via OPENAI_BASE_URL).

    Classic models get `max_tokens` and `temperature`; reasoning models (o-series, gpt-5) get
    `max_completion_tokens` and the default temperature. A deployment name may hide the family, so a 400 that
    refuses one of those parameters switches to the other style once, for this summarizer's lifetime.
    """

    def __init__(self, model: str = "gpt-4o-mini", *, client: Any | None = None, api_key: str | None = None,
                 base_url: str | None = None, timeout: float = 60.0, temperature: float = 0.0) -> None:
        if client is None:
            from openai import AsyncOpenAI

            # max_retries=0: the engine retries later with its own backoff, off the request path.
            client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.client = client
        self.model = model
        self.temperature = temperature
        self.reasoning_style = is_reasoning_model(model)

    def __repr__(self) -> str:
        return f"OpenAISummarizer(model={self.model!r})"

    def _params(self, reasoning: bool, max_tokens: int) -> dict[str, Any]:
        if reasoning:
            return {"max_completion_tokens": max_tokens}
        return {"max_tokens": max_tokens, "temperature": self.temperature}

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        system, user = prompt_for(request)
        messages: list[Any] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        refusals: list[tuple[str, dict[str, Any]]] = []
        while True:
            params = self._params(self.reasoning_style, request.max_tokens)
            try:
                resp = await self.client.chat.completions.create(model=self.model, messages=messages, **params)
                break
            except Exception as exc:
                refused = _refused_param(exc, params)
                if refused is None:
                    raise
                refusals.append((refused, params))
                if len(refusals) == 2:
                    # from None: the server's text may quote request headers (an API key); the names say enough.
                    raise ConfigurationError(f"model {self.model!r} refused both parameter styles: " + " and ".join(
                        f"{name!r} (with {', '.join(sorted(sent))})" for name, sent in refusals)
                        + "; check the model or deployment name") from None
                # The name did not tell the family: the refusal does. Keep the other style for every later call.
                self.reasoning_style = not self.reasoning_style
        text = (resp.choices[0].message.content or "").strip()
        usage = getattr(resp, "usage", None)
        return SummaryResult(text, self.model, getattr(usage, "prompt_tokens", None),
                             getattr(usage, "completion_tokens", None))


class OfflineSummarizer:
    """Deterministic and local: keeps the first words of each message. Clearly labelled; for demos and tests."""

    model = "offline-extractive"
    LABEL = "[offline summary, no LLM]"

    def __init__(self, words_per_message: int = 12) -> None:
        self.words = words_per_message

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        prev = request.previous_summary or ""
        if prev.startswith(self.LABEL):
            prev = prev[len(self.LABEL):].strip()
        lines = [prev] if prev else []
        for m in request.messages:
            words = _text_of(m.content).split()
            lines.append(f"{m.role}: {' '.join(words[:self.words])}{' ...' if len(words) > self.words else ''}")
        budget_chars = request.max_tokens * 4
        body = "\n".join(lines)
        if len(body) > budget_chars:
            body = "... " + body[-budget_chars:]  # the newest facts matter most
        return SummaryResult(f"{self.LABEL}\n{body}", self.model)


class CallableSummarizer:
    """Wraps `fn(previous_summary, messages) -> str` (sync or async)."""

    def __init__(self, fn: Callable[[str | None, list[Message]], str | Awaitable[str]], model: str = "callable"):
        self.fn = fn
        self.model = model

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        if inspect.iscoroutinefunction(self.fn):
            out = await self.fn(request.previous_summary, request.messages)
        else:
            out = await asyncio.to_thread(self.fn, request.previous_summary, request.messages)
            if inspect.isawaitable(out):
                out = await out
        return SummaryResult(str(out).strip(), self.model)


class LangChainSummarizer:
    """Any LangChain chat model (`ainvoke` with a system and a human message)."""

    def __init__(self, model: Any) -> None:
        self.llm = model
        self.model = str(getattr(model, "model_name", None) or getattr(model, "model", None)
                         or type(model).__name__)

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        from langchain_core.messages import HumanMessage, SystemMessage

        system, user = prompt_for(request)
        out = await self.llm.ainvoke([SystemMessage(system), HumanMessage(user)])
        usage = getattr(out, "usage_metadata", None) or {}
        return SummaryResult(_text_of(out.content).strip(), self.model, usage.get("input_tokens"),
                             usage.get("output_tokens"))


class LlamaIndexSummarizer:
    """Any LlamaIndex LLM (`achat` with a system and a user message)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        metadata = getattr(llm, "metadata", None)
        self.model = str(getattr(metadata, "model_name", None) or type(llm).__name__)

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        from llama_index.core.llms import ChatMessage

        system, user = prompt_for(request)
        resp = await self.llm.achat([ChatMessage(role="system", content=system),
                                     ChatMessage(role="user", content=user)])
        return SummaryResult(str(resp.message.content or "").strip(), self.model)


def as_summarizer(obj: Any) -> Summarizer:
    """Adapt whatever the user gave: a Summarizer, a LangChain model, a LlamaIndex LLM or a function."""
    if isinstance(obj, Summarizer):
        return obj
    module = type(obj).__module__
    if module.startswith("langchain") or hasattr(obj, "ainvoke"):
        return LangChainSummarizer(obj)
    if module.startswith("llama_index") or hasattr(obj, "achat"):
        return LlamaIndexSummarizer(obj)
    if callable(obj):
        return CallableSummarizer(obj)
    raise TypeError(f"cannot use {type(obj).__name__} as a summarizer")


def default_summarizer(model: str, timeout: float) -> Summarizer:
    """OpenAI when a key is configured, else the offline summarizer (labelled as such)."""
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAISummarizer(model, timeout=timeout)
    return OfflineSummarizer()


@dataclass
class _Counter:
    fn: TokenCounter | None = None
    name: str = field(default="approx-chars/4")


_COUNTER = _Counter()


def token_counter_name() -> str:
    default_token_counter()
    return _COUNTER.name


def default_token_counter() -> TokenCounter:
    """tiktoken `cl100k_base` (offline through llama-index-core's bundled cache when present), else chars/4."""
    if _COUNTER.fn is not None:
        return _COUNTER.fn
    fn: TokenCounter = lambda text: max(1, len(text) // 4) if text else 0  # noqa: E731
    try:
        if "TIKTOKEN_CACHE_DIR" not in os.environ:
            try:
                import llama_index.core as li

                cache = os.path.join(os.path.dirname(li.__file__), "_static", "tiktoken_cache")
                if os.path.isdir(cache):
                    os.environ["TIKTOKEN_CACHE_DIR"] = cache
            except ImportError:
                pass
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
        fn = lambda text: len(enc.encode(text, disallowed_special=()))  # noqa: E731
        _COUNTER.name = "tiktoken/cl100k_base"
    except Exception:  # no tiktoken, or its file is not available offline: approximate
        pass
    _COUNTER.fn = fn
    return fn
