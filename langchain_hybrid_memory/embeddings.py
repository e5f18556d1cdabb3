"""Embedders for recall's vector search: OpenAI (the default with a key), any LangChain `Embeddings`, any
LlamaIndex embedding model, a plain function, and an offline model whose weights ship in a wheel.

An embedder has a `model` name (vectors of different models are never compared) and `aembed(texts)`, which
returns one vector per text. Blocking embedders run in a worker thread, so the engine loop never waits on them.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

Vector = list[float]


@runtime_checkable
class Embedder(Protocol):
    """What the engine calls: `model` names the vector space; `aembed` embeds texts (documents or a query)."""

    model: str

    async def aembed(self, texts: Sequence[str]) -> list[Vector]: ...


class OpenAIEmbedder:
    """The `openai` async client's embeddings (`text-embedding-3-small` by default; honours OPENAI_BASE_URL)."""

    def __init__(self, model: str = "text-embedding-3-small", *, client: Any | None = None,
                 api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0) -> None:
        if client is None:
            from openai import AsyncOpenAI

            # max_retries=0: the engine retries later with its own backoff, off the request path.
            client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self.client = client
        self.model = model

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r})"

    async def aembed(self, texts: Sequence[str]) -> list[Vector]:
        resp = await self.client.embeddings.create(model=self.model, input=list(texts))
        return [list(d.embedding) for d in sorted(resp.data, key=lambda d: d.index)]


class OfflineEmbedder:
    """WordLlama's 256-dimension static embeddings, loaded from its wheel (no download, no network): for the
    demo, notebooks and tests. A small model: it finds paraphrases only in part."""

    model = "wordllama-l2_supercat-256 (offline)"

    def __init__(self) -> None:
        self._wl: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "OfflineEmbedder()"

    def _load(self) -> Any:
        with self._lock:
            if self._wl is None:
                from pathlib import Path

                import wordllama

                # Its default loader looks for the tokenizer in the wrong folder of the package, then downloads:
                # pointing the cache at the package finds both files there.
                self._wl = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent,
                                                    disable_download=True)
            return self._wl

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        return [list(map(float, v)) for v in self._load().embed(list(texts), norm=True)]

    async def aembed(self, texts: Sequence[str]) -> list[Vector]:
        return await asyncio.to_thread(self.embed, texts)


class _Function:
    def __init__(self, fn: Callable[[list[str]], Any], model: str) -> None:
        self.fn = fn
        self.model = model
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"FunctionEmbedder(model={self.model!r})"

    async def aembed(self, texts: Sequence[str]) -> list[Vector]:
        if self.is_async:
            out = await self.fn(list(texts))
        else:
            out = await asyncio.to_thread(self.fn, list(texts))
        return [list(map(float, v)) for v in out]


class _LangChain:
    def __init__(self, embeddings: Any) -> None:
        self.embeddings = embeddings
        self.model = f"langchain:{type(embeddings).__name__}:{getattr(embeddings, 'model', '')}"

    async def aembed(self, texts: Sequence[str]) -> list[Vector]:
        return [list(v) for v in await self.embeddings.aembed_documents(list(texts))]


class _LlamaIndex:
    def __init__(self, model: Any) -> None:
        self.embed_model = model
        self.model = f"llamaindex:{type(model).__name__}:{getattr(model, 'model_name', '')}"

    async def aembed(self, texts: Sequence[str]) -> list[Vector]:
        return [list(v) for v in await self.embed_model.aget_text_embedding_batch(list(texts))]


def as_embedder(obj: Any, *, model: str | None = None) -> Embedder:
    """An `Embedder` from whatever is given: one already, a LangChain `Embeddings`, a LlamaIndex embedding
    model, or a function `texts -> vectors` (sync or async; `model` names it)."""
    if isinstance(obj, Embedder):
        return obj
    if hasattr(obj, "aembed_documents") and hasattr(obj, "embed_query"):
        return _LangChain(obj)
    if hasattr(obj, "aget_text_embedding_batch"):
        return _LlamaIndex(obj)
    if callable(obj):
        return _Function(obj, model or str(getattr(obj, "__name__", "function")))
    raise TypeError(f"not an embedder: {type(obj).__name__} (give an Embedder, a LangChain Embeddings, a "
                    "LlamaIndex embedding model, or a function texts -> vectors)")

