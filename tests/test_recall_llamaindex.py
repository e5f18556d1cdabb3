"""Recall through LlamaIndex: a `Memory` block that brings back archived messages, and a retriever."""

from __future__ import annotations

from collections.abc import Callable

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import Memory
from llama_index.core.schema import QueryBundle

from langchain_hybrid_memory import HybridMemory
from llamaindex_adapter import HybridDBChatStore, HybridRecallBlock, HybridRecallRetriever

FACT = "The wifi password at the cabin is bluefinch42"


def words(text: str) -> list[str]:
    return text.split()


async def _conversation(memory: Memory) -> None:
    await memory.aput(ChatMessage(role="user", content=FACT))
    await memory.aput(ChatMessage(role="assistant", content="Noted."))
    for i in range(30):
        await memory.aput(ChatMessage(role="user" if i % 2 == 0 else "assistant",
                                      content=f"chatting about hiking route {i} and snacks"))


async def test_the_block_recalls_what_memory_archived_for_the_latest_question(
        make_memory: Callable[..., HybridMemory]) -> None:
    hybrid = make_memory()
    store = HybridDBChatStore(memory=hybrid)
    block = HybridRecallBlock(memory=hybrid)
    memory = Memory.from_defaults(session_id="cabin", chat_store=store, memory_blocks=[block], token_limit=80,
                                  token_flush_size=10, chat_history_token_ratio=0.5, tokenizer_fn=words)
    await _conversation(memory)
    await memory.aput(ChatMessage(role="user", content="What was the wifi password again?"))
    assert await hybrid.await_for_index(30)
    prompt = await memory.aget()
    queue = [m.content for m in prompt[1:]]
    assert FACT not in queue  # archived by Memory...
    assert prompt[0].role.value == "system" and FACT in (prompt[0].content or "")  # ...and brought back
    # Nothing the queue holds is repeated, and a question nothing matches adds nothing.
    assert all(text not in (prompt[0].content or "") for text in queue)
    assert await block.aget([ChatMessage(role="user", content="volcanoes?")], session_id="cabin") == ""


async def test_the_retriever_finds_a_keys_messages_and_nothing_of_other_keys(
        make_memory: Callable[..., HybridMemory]) -> None:
    hybrid = make_memory()
    store = HybridDBChatStore(memory=hybrid)
    for key in ("cabin", "office"):
        memory = Memory.from_defaults(session_id=key, chat_store=store, token_limit=80, token_flush_size=10,
                                      chat_history_token_ratio=0.5, tokenizer_fn=words)
        await _conversation(memory)
    assert await hybrid.await_for_index(30)
    nodes = await HybridRecallRetriever(hybrid, key="cabin", k=3).aretrieve("wifi password")
    assert [n.node.get_content() for n in nodes] == [FACT]
    assert nodes[0].score and nodes[0].node.metadata["role"] == "user"
    sync = HybridRecallRetriever(hybrid, key="office").retrieve(QueryBundle("hiking route 3"))
    assert sync and all(n.node.metadata["session_id"].endswith("office") for n in sync)
