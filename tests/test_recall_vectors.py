"""Recall's vector search: embedders (offline, OpenAI over its protocol, LangChain, LlamaIndex, a function),
embeddings computed in the background after the commit, fusion with full-text search, and an embedder that
fails or lags (full-text search still answers)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_hybrid_memory import HybridMemory, InvalidInputError, Message
from langchain_hybrid_memory.embeddings import OfflineEmbedder, OpenAIEmbedder, as_embedder
from langchain_hybrid_memory.errors import EmbedderError

from conftest import pg_fetch
from hybrid_memory_testing.fake_openai import FakeOpenAI, bag_of_words

FACT = "I am flying to Lisbon next Tuesday for the conference"
PARAPHRASE = "which city is my trip to?"  # no word in common with FACT once stop words are dropped


def _chat() -> list[Message]:
    out = [Message("human", FACT, id="fact")]
    out += [Message("human" if i % 2 == 0 else "ai", f"turn {i}: cooking pasta and the rainy weather", id=f"f{i}")
            for i in range(30)]
    return out


def test_the_offline_embedder_loads_from_its_wheel_with_the_network_off() -> None:
    script = textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network is off in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from langchain_hybrid_memory.embeddings import OfflineEmbedder
        vectors = OfflineEmbedder().embed(["hello there", "general kenobi"])
        assert len(vectors) == 2 and len(vectors[0]) == 256, vectors
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_vectors_find_a_paraphrase_that_full_text_misses_and_fusion_keeps_both(
        make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory(embedder=OfflineEmbedder())
    memory.add_messages("s", _chat())
    assert memory.wait_for_index(60)
    stats = memory.get_cache_stats()
    assert stats.embedded == 31 and stats.embed_backlog == 0
    assert memory.search(PARAPHRASE, session_id="s", method="lexical") == []
    assert memory.search(PARAPHRASE, session_id="s", method="vector")[0].message.id == "fact"
    assert memory.search(PARAPHRASE, session_id="s")[0].message.id == "fact"  # auto: fused
    assert memory.search("Lisbon conference", session_id="s", method="fused")[0].message.id == "fact"
    ns = memory.config.namespace
    rows = pg_fetch(f'SELECT octet_length(embedding) AS n, model_id FROM "{ns}".message_vectors')
    assert len(rows) == 31 and {(r["n"], r["model_id"]) for r in rows} == {(256 * 4, rows[0]["model_id"])}
    with pytest.raises(InvalidInputError, match="method"):
        memory.search("x", session_id="s", method="psychic")
    plain = make_memory()  # no embedder: vectors cannot be asked for
    with pytest.raises(InvalidInputError, match="embedder"):
        plain.search("x", session_id="s", method="vector")


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


def test_the_openai_embedder_over_the_real_client(make_memory: Callable[..., HybridMemory],
                                                  openai_server: FakeOpenAI, monkeypatch: Any) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    memory = make_memory(embedder=OpenAIEmbedder())
    memory.add_messages("s", _chat())
    assert memory.wait_for_index(60)
    asked = [r for r in openai_server.received if "input" in r]
    assert asked and {r["model"] for r in asked} == {"text-embedding-3-small"}
    assert sum(len(r["input"]) for r in asked) >= 31
    hits = memory.search("Lisbon", session_id="s", method="vector")
    assert hits[0].message.id == "fact"


async def test_langchain_llamaindex_and_function_embedders(make_memory: Callable[..., HybridMemory]) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from llama_index.core.embeddings import MockEmbedding

    def words(texts: list[str]) -> list[list[float]]:
        return [bag_of_words(t) for t in texts]

    async def awords(texts: list[str]) -> list[list[float]]:
        return words(texts)

    for embedder in (DeterministicFakeEmbedding(size=32), MockEmbedding(embed_dim=16), words, awords):
        memory = make_memory(embedder=embedder)
        sid = f"s-{id(embedder)}"
        await memory.aadd_messages(sid, _chat()[:5])
        assert await memory.await_for_index(30), embedder
        assert (await memory.aget_cache_stats()).embedded >= 5
        assert len(await memory.asearch("Lisbon", session_id=sid, method="vector", k=3)) >= 1
        # Stopped before the next: a message has one vector, of the model whose indexer embedded it first, and
        # this one's indexer would otherwise embed the next session with its own model.
        await memory.aclose()
    assert as_embedder(words).model == "words"
    with pytest.raises(TypeError, match="not an embedder"):
        as_embedder(42)


class Flaky:
    """An embedder that fails while `down` is set, and can be held back by `gate`."""

    model = "flaky-bag-of-words"

    def __init__(self) -> None:
        self.down = True
        self.gate = threading.Event()
        self.gate.set()

    async def aembed(self, texts: Any) -> list[list[float]]:
        if self.down:
            raise ConnectionError("embedder unreachable")
        await asyncio.to_thread(self.gate.wait)  # held back by the test, on another thread
        return [bag_of_words(t) for t in texts]


def test_a_failing_then_lagging_embedder_leaves_full_text_search_working(
        make_memory: Callable[..., HybridMemory]) -> None:
    flaky = Flaky()
    memory = make_memory(embedder=flaky, recall_index_interval=0.05)
    memory.add_messages("s", _chat())
    assert memory.wait_for_index(30) is False  # full text is indexed; the vectors wait for the embedder
    stats = memory.get_cache_stats()
    assert stats.index_backlog == 0 and stats.embed_backlog == 1 and stats.embed_failures > 0
    assert [h.message.id for h in memory.search("Lisbon", session_id="s")] == ["fact"]  # auto: full text
    with pytest.raises(EmbedderError):
        memory.search("Lisbon", session_id="s", method="vector")
    # Back, but slow: the write path and full-text search do not wait for it.
    flaky.down = False
    flaky.gate.clear()
    memory.add_messages("s", [Message("human", "the Lisbon hotel is booked", id="hotel")])
    assert memory.get_context("s").messages[-1].id == "hotel"
    memory.flush()
    assert memory.wait_for_index(2) is False
    assert {h.message.id for h in memory.search("Lisbon", session_id="s", method="lexical")} == {"fact", "hotel"}
    flaky.gate.set()
    assert memory.wait_for_index(30)
    assert memory.get_cache_stats().embed_backlog == 0
    assert memory.search("Lisbon", session_id="s", method="vector")[0].message.id in {"fact", "hotel"}
