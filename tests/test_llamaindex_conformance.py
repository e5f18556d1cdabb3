"""Both LlamaIndex stores against the reusable conformance suite, on the real servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from langchain_hybrid_memory import HybridMemory
from llamaindex_adapter import HybridChatStore, HybridDBChatStore

pytest.register_assert_rewrite("chat_store_conformance")  # detailed assertion messages from the suite
from chat_store_conformance import ChatStoreConformance, DBChatStoreConformance  # noqa: E402

# A small window, so that every ordering check also reads past what Redis caches.
WINDOW = 8


class TestHybridChatStore(ChatStoreConformance):
    @pytest.fixture
    def chat_store(self, make_memory: Callable[..., HybridMemory]) -> HybridChatStore:
        return HybridChatStore(memory=make_memory(max_session_messages=WINDOW))


class TestHybridDBChatStore(DBChatStoreConformance):
    @pytest.fixture
    def db_chat_store(self, make_memory: Callable[..., HybridMemory]) -> HybridDBChatStore:
        return HybridDBChatStore(memory=make_memory(max_session_messages=WINDOW))
