"""Sync/async twins: every public method of every public class has its twin, with the same signature.

A twin pair is a plain method `x` and a coroutine function (or async generator) `ax`: same parameters, in the same
order, of the same kinds, with the same defaults and annotations, and the same return annotation (an async
generator's `AsyncIterator[T]` stands for the sync `Iterator[T]`). `await_for_summaries`, `aiter_transcript` and
`aclose` follow that rule as written (`a` + `wait_for_summaries`, `iter_transcript`, `close`). A callback parameter
of the async twin returns an awaitable of what the sync one's returns (`Callable[..., Awaitable[T]]` for
`Callable[..., T]`), as the frameworks' hooks have it.

The methods checked are those our packages define (along each class's MRO); what a class inherits unchanged from
LangChain, LlamaIndex or pydantic is those libraries' interface. Every exception to the naming rule is listed below
with its reason, so a new public method without a twin (or with a twin of another signature) fails this module.
Introspection only: no server is touched.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore

from langchain_hybrid_memory import HybridMemory
from langchain_hybrid_memory.checkpoint import HybridSaver
from langchain_hybrid_memory.history import HybridChatMessageHistory
from langchain_hybrid_memory.middleware import HybridMemoryMiddleware, HybridSummarizer
from llamaindex_adapter import HybridChatStore, HybridDBChatStore, HybridRecallBlock, HybridSummaryBlock

PUBLIC_CLASSES: tuple[type, ...] = (HybridMemory, HybridChatMessageHistory, HybridMemoryMiddleware, HybridSummarizer,
                                    HybridChatStore, HybridDBChatStore, HybridSummaryBlock, HybridSaver,
                                    HybridRecallBlock)
OUR_MODULES = ("langchain_hybrid_memory", "llamaindex_adapter")
# Protocol methods that come in twins too: `with` and `async with`.
PROTOCOL_TWINS = {"__enter__": "__aenter__", "__exit__": "__aexit__"}

# Async twins whose name is not `a` + the sync name (in addition to that one, when it exists).
RENAMED: dict[tuple[type, str], tuple[str, str]] = {
    (HybridChatStore, "add_message"): (
        "async_add_message", "LlamaIndex's BaseChatStore names it so (aadd_message is our alias, by the rule)"),
}
# The sync side of an async method is a property, as the framework's interface has it.
PROPERTY_TWINS: dict[tuple[type, str], tuple[str, str]] = {
    (HybridChatMessageHistory, "aget_messages"): (
        "messages", "LangChain's BaseChatMessageHistory: the `messages` property, `aget_messages()` its twin"),
}
# Plain methods without an async twin: none of them does I/O or waits.
SYNC_ONLY: dict[tuple[type, str], str] = {
    (HybridChatMessageHistory, "refresh"): "forgets the kept view in memory; no I/O",
    (HybridSummaryBlock, "source_session_id"): "maps a key to an engine session id; a pure function",
    (HybridChatStore, "class_name"): "LlamaIndex's serialisation name (classmethod); no I/O",
    (HybridDBChatStore, "class_name"): "LlamaIndex's serialisation name (classmethod); no I/O",
    (HybridChatStore, "model_post_init"): "pydantic's initialisation hook, called by pydantic; no I/O",
    (HybridDBChatStore, "model_post_init"): "pydantic's initialisation hook, called by pydantic; no I/O",
    (HybridSummaryBlock, "model_post_init"): "pydantic's initialisation hook, called by pydantic; no I/O",
    (HybridRecallBlock, "model_post_init"): "pydantic's initialisation hook, called by pydantic; no I/O",
    (HybridSaver, "get_next_version"): "LangGraph's BaseCheckpointSaver interface: a version string; no I/O",
}
# Coroutine functions without a sync twin.
_DB_STORE = "LlamaIndex's AsyncDBChatStore interface is async only, with plain names"
ASYNC_ONLY: dict[tuple[type, str], str] = {
    **{(HybridDBChatStore, name): _DB_STORE for name in (
        "add_message", "add_messages", "archive_oldest_messages", "count_messages", "delete_message",
        "delete_messages", "delete_oldest_messages", "get_keys", "get_messages", "set_messages")},
    (HybridSummaryBlock, "atruncate"): "LlamaIndex's BaseMemoryBlock interface is async only (aget, aput, atruncate)",
    (HybridRecallBlock, "atruncate"): "LlamaIndex's BaseMemoryBlock interface is async only (aget, aput, atruncate)",
}
# Pairs whose signatures differ today, with the exact difference (the test for that pair is a strict xfail).
KNOWN_MISMATCHES: dict[tuple[type, str, str], str] = {}


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _methods(cls: type) -> dict[str, Any]:
    """Public methods (and the protocol twins) that our packages define for `cls`, by name."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(OUR_MODULES):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") and name not in PROTOCOL_TWINS and name not in PROTOCOL_TWINS.values():
                continue
            if isinstance(raw, (classmethod, staticmethod)) or inspect.isfunction(raw):
                found[name] = getattr(cls, name)
            else:
                found.pop(name, None)  # a property or an attribute (e.g. pydantic's model_config) hides it
    return found


def _twin_names(cls: type) -> tuple[list[tuple[str, str]], list[str]]:
    """(sync, async) pairs of `cls`, and the problems: methods with neither a twin nor a listed reason."""
    methods = _methods(cls)
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    for name, fn in sorted(methods.items()):
        if _is_async(fn):
            continue
        twins = []
        if name in PROTOCOL_TWINS:
            twins.append(PROTOCOL_TWINS[name])
        elif not name.startswith("__"):
            twins.append(f"a{name}")
        if (cls, name) in RENAMED:
            twins.append(RENAMED[cls, name][0])
        present = [t for t in twins if t in methods or hasattr(cls, t)]
        if (cls, name) in SYNC_ONLY:
            if present:
                problems.append(f"{name} is listed as sync only but has {present}")
            continue
        if not present:
            problems.append(f"{name}: no async twin (looked for {twins})")
        pairs += [(name, t) for t in present]
    paired_async = {a for _, a in pairs}
    for name, fn in sorted(methods.items()):
        if not _is_async(fn) or name in paired_async:
            continue
        if (cls, name) in PROPERTY_TWINS:
            pairs.append((PROPERTY_TWINS[cls, name][0], name))
        elif (cls, name) not in ASYNC_ONLY:
            problems.append(f"{name}: no sync twin")
    return pairs, problems


def _all_pairs() -> list[Any]:
    params = []
    for cls in PUBLIC_CLASSES:
        for sync_name, async_name in _twin_names(cls)[0]:
            marks = []
            if (cls, sync_name, async_name) in KNOWN_MISMATCHES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_MISMATCHES[cls, sync_name, async_name]))
            params.append(pytest.param(cls, sync_name, async_name, marks=marks,
                                       id=f"{cls.__name__}.{sync_name}<->{async_name}"))
    return params


def _sync_side(cls: type, name: str) -> Callable[..., Any]:
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        assert raw.fget is not None
        return raw.fget
    fn: Callable[..., Any] = getattr(cls, name)
    return fn


def _as_async_return(annotation: Any) -> Any:
    """A sync generator's return annotation as its async generator twin writes it."""
    if isinstance(annotation, str):
        return re.sub(r"\b(Iterator|Iterable|Generator)\[", lambda m: f"Async{m.group(1)}[", annotation)
    return annotation


def _as_sync_callback(annotation: Any) -> Any:
    """An async twin's callback annotation as the sync one writes it: `Awaitable[T]` as a callable's result is T."""
    if not isinstance(annotation, str) or "Awaitable[" not in annotation:
        return annotation
    start = annotation.index("Awaitable[")
    depth, i = 0, start + len("Awaitable")
    for i in range(start + len("Awaitable"), len(annotation)):
        depth += {"[": 1, "]": -1}.get(annotation[i], 0)
        if depth == 0:
            break
    inner = annotation[start + len("Awaitable["):i]
    return _as_sync_callback(annotation[:start] + inner + annotation[i + 1:])


def _shape(sig: inspect.Signature, *, callbacks: bool = False) -> list[tuple[str, str, Any, Any]]:
    return [(p.name, p.kind.name, p.default, _as_sync_callback(p.annotation) if callbacks else p.annotation)
            for p in sig.parameters.values()]


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_every_public_method_has_a_twin_or_a_listed_reason(cls: type) -> None:
    _, problems = _twin_names(cls)
    assert problems == [], f"{cls.__name__}: {problems}"


def test_every_listed_exception_names_a_method_that_exists() -> None:
    """The lists stay honest: an exception for a method that is gone (or not ours) is an error too."""
    for table in (RENAMED, PROPERTY_TWINS, SYNC_ONLY, ASYNC_ONLY):
        for cls, name in table:
            assert name in _methods(cls), f"{cls.__name__}.{name} is listed but not a public method of ours"
    for (cls, name), (twin, _) in {**RENAMED, **PROPERTY_TWINS}.items():
        assert hasattr(cls, twin), f"{cls.__name__}.{twin} (listed twin of {name}) does not exist"
    for cls, name in SYNC_ONLY:
        assert not _is_async(_methods(cls)[name]), f"{cls.__name__}.{name} is listed as sync but is async"
    for cls, name in ASYNC_ONLY:
        assert _is_async(_methods(cls)[name]), f"{cls.__name__}.{name} is listed as async but is sync"


def test_the_db_store_is_async_only_exactly_where_its_interface_is() -> None:
    """HybridDBChatStore's async-only methods are the coroutines of LlamaIndex's AsyncDBChatStore, all of them."""
    interface = {name for name, fn in vars(AsyncDBChatStore).items()
                 if not name.startswith("_") and inspect.iscoroutinefunction(fn)}
    listed = {name for cls, name in ASYNC_ONLY if cls is HybridDBChatStore}
    assert listed == interface


@pytest.mark.parametrize("cls, sync_name, async_name", _all_pairs())
def test_twins_have_the_same_signature(cls: type, sync_name: str, async_name: str) -> None:
    sync_fn = _sync_side(cls, sync_name)
    async_fn = getattr(cls, async_name)
    assert not _is_async(sync_fn), f"{cls.__name__}.{sync_name} should be a plain method"
    assert _is_async(async_fn), f"{cls.__name__}.{async_name} should be a coroutine function or async generator"
    sync_sig, async_sig = inspect.signature(sync_fn), inspect.signature(async_fn)
    assert _shape(async_sig, callbacks=True) == _shape(sync_sig), \
        f"{cls.__name__}: {sync_name}{sync_sig} vs {async_name}{async_sig}"
    expected_return = (_as_async_return(sync_sig.return_annotation) if inspect.isasyncgenfunction(async_fn)
                       else sync_sig.return_annotation)
    assert async_sig.return_annotation == expected_return, \
        f"{cls.__name__}: {sync_name} -> {sync_sig.return_annotation} vs {async_name} -> {async_sig.return_annotation}"
