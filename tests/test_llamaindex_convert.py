"""`ChatMessage` <-> engine `Message`: lossless round trips, the stored form, LangChain interop, key mapping.

Round trips go through the engine's own wire codec (`encode` / `decode`), which is what Redis and PostgreSQL
hold; the stores' tests check the same through the real servers.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock, ToolCallBlock

from langchain_hybrid_memory import InvalidSessionIdError, Message
from langchain_hybrid_memory import _lc_convert as lc
from langchain_hybrid_memory.messages import decode, encode
from llamaindex_adapter._convert import (
    LI_KEY,
    PREFIX,
    active_session_id,
    archived_session_id,
    from_engine,
    key_of,
    summary_session_id,
    to_engine,
)

pytest.register_assert_rewrite("chat_store_conformance")  # detailed assertion messages from the suite
from chat_store_conformance import PNG, UNICODE_SAMPLES, sample_messages  # noqa: E402


def through_the_wire(message: ChatMessage) -> ChatMessage:
    return from_engine(decode(7, encode(to_engine(message))))


@pytest.mark.parametrize("message", sample_messages("conv"), ids=lambda m: m.role.value)
def test_every_shape_round_trips(message: ChatMessage) -> None:
    back = through_the_wire(message)
    assert back.model_dump(mode="json") == message.model_dump(mode="json")
    assert back == message  # no bytes in additional_kwargs here: equal as objects too


@pytest.mark.parametrize("text", [*UNICODE_SAMPLES, "lone \ud800 surrogate \udfff"])
def test_text_round_trips_exactly(text: str) -> None:
    # (Not in a key of additional_kwargs: pydantic's JSON mode cannot dump a lone surrogate in a dict key.)
    message = ChatMessage(role="user", content=text, additional_kwargs={"k": text, "l": [text]})
    assert through_the_wire(message) == message


def test_stored_form_is_readable_by_others() -> None:
    plain = to_engine(ChatMessage(role="assistant", content="hello"))
    assert (plain.role, plain.content, plain.metadata) == ("assistant", "hello", {LI_KEY: {}})
    tool = to_engine(ChatMessage(role="tool", content="3", additional_kwargs={"tool_call_id": "c1", "extra": 1}))
    assert tool.metadata == {"tool_call_id": "c1", LI_KEY: {"additional_kwargs": {"extra": 1}}}
    multi = to_engine(ChatMessage(role="user", blocks=[TextBlock(text="see"), ImageBlock(url="https://x.org/a.png")]))
    assert isinstance(multi.content, list)
    assert [b["type"] for b in multi.content] == ["text", "image"]  # what LangChain readers look for
    assert multi.content[0] == {"type": "text", "block_type": "text", "text": "see"}


def test_bytes_in_additional_kwargs_become_base64_like_every_llamaindex_store() -> None:
    message = ChatMessage(content="x", additional_kwargs={"raw": b"\x00\xff"})
    back = through_the_wire(message)
    assert back.additional_kwargs == {"raw": "AP8="}
    assert back.model_dump(mode="json") == message.model_dump(mode="json")


def test_image_bytes_survive() -> None:
    back = through_the_wire(ChatMessage(role="user", blocks=[ImageBlock(image=PNG)]))
    block = back.blocks[0]
    assert isinstance(block, ImageBlock) and block.image_mimetype == "image/png"
    assert block.resolve_image().read() == PNG


def test_an_image_whose_file_is_gone_stays_readable() -> None:
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
        f.write(PNG)
    message = ChatMessage(role="user", blocks=[TextBlock(text="look"), ImageBlock(path=f.name)])
    stored = decode(1, encode(to_engine(message)))
    os.unlink(f.name)  # validation of ImageBlock.path would now fail
    back = from_engine(stored)
    assert back.content == "look" and str(back.blocks[1].path) == f.name  # type: ignore[union-attr]


def test_reads_return_new_objects() -> None:
    stored = to_engine(ChatMessage(role="system", content="rules", additional_kwargs={"a": [1]}))
    one, two = from_engine(stored), from_engine(stored)
    one.additional_kwargs["a"].append(2)
    one.blocks.append(TextBlock(text="more"))
    assert two.additional_kwargs == {"a": [1]} and len(two.blocks) == 1


def test_only_chat_messages_are_accepted() -> None:
    with pytest.raises(TypeError):
        to_engine({"role": "user", "content": "x"})  # type: ignore[arg-type]


# -- LangChain interop --------------------------------------------------------------------------------------
def test_langchain_messages_read_as_llamaindex_messages() -> None:
    written = [
        SystemMessage("rules"),
        HumanMessage(content=[{"type": "text", "text": "what is this?"},
                              {"type": "image_url", "image_url": {"url": "https://x.org/cat.png"}}]),
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": "cat"}, "id": "call-1"}]),
        ToolMessage("a cat", tool_call_id="call-1", name="lookup"),
        AIMessage("It is a cat."),
    ]
    got = [from_engine(decode(i, encode(lc.to_engine(m)))) for i, m in enumerate(written)]
    assert [m.role for m in got] == [MessageRole.SYSTEM, MessageRole.USER, MessageRole.ASSISTANT,
                                     MessageRole.TOOL, MessageRole.ASSISTANT]
    assert got[0].content == "rules"
    assert got[1].content == "what is this?" and isinstance(got[1].blocks[1], ImageBlock)
    assert str(got[1].blocks[1].url) == "https://x.org/cat.png"
    call = got[2].blocks[-1]
    assert isinstance(call, ToolCallBlock)
    assert (call.tool_call_id, call.tool_name, call.tool_kwargs) == ("call-1", "lookup", {"q": "cat"})
    assert got[3].additional_kwargs == {"tool_call_id": "call-1", "name": "lookup"}
    assert got[3].content == "a cat" and got[4].content == "It is a cat."


def test_llamaindex_messages_read_as_langchain_messages() -> None:
    ours = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello"),
            ChatMessage(role="tool", content="3", additional_kwargs={"tool_call_id": "c9", "name": "add"}),
            ChatMessage(role="system", content="rules")]
    got = [lc.from_engine(decode(i, encode(to_engine(m)))) for i, m in enumerate(ours)]
    assert [type(m).__name__ for m in got] == ["HumanMessage", "AIMessage", "ToolMessage", "SystemMessage"]
    assert isinstance(got[2], ToolMessage) and got[2].tool_call_id == "c9" and got[2].name == "add"
    assert [m.content for m in got] == ["hi", "hello", "3", "rules"]


def test_foreign_unknown_roles_and_blocks_do_not_break_reads() -> None:
    odd = Message(role="critic", content=[{"type": "weird", "x": 1}, "plain", 5])
    back = from_engine(odd)
    assert back.role == MessageRole.USER
    assert [b.text for b in back.blocks] == ['{"type": "weird", "x": 1}', "plain", "5"]  # type: ignore[union-attr]


# -- property: anything JSON-shaped round-trips --------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(role=st.sampled_from([r.value for r in MessageRole]), texts=st.lists(st.text(), min_size=0, max_size=3),
       kwargs=st.dictionaries(st.text(max_size=12), json_values, max_size=4))
def test_round_trip_property(role: str, texts: list[str], kwargs: dict[str, Any]) -> None:
    message = ChatMessage(role=role, blocks=[TextBlock(text=t) for t in texts], additional_kwargs=kwargs)
    assert through_the_wire(message).model_dump(mode="json") == message.model_dump(mode="json")


# -- keys -> sessions -----------------------------------------------------------------------------------------
TRICKY_KEYS = ["k", "chat_history", "a:b", f"{PREFIX}", f"{PREFIX}r:k", f"{PREFIX}a:k", f"{PREFIX}s:k", f"{PREFIX}x",
               "k ", " k", "é", "🧠", "a" * 200]


def test_the_key_mapping_is_injective_and_invertible() -> None:
    ids: dict[str, tuple[str, str]] = {}
    for key in TRICKY_KEYS:
        for kind, fn in (("active", active_session_id), ("archived", archived_session_id),
                         ("summary", summary_session_id)):
            sid = fn(key)
            assert sid not in ids, f"{kind}({key!r}) == {ids[sid]}"
            ids[sid] = (kind, key)
        assert key_of(active_session_id(key)) == (key, False)
        assert key_of(archived_session_id(key)) == (key, True)
        assert key_of(summary_session_id(key)) is None  # not a chat store key
    assert active_session_id("plain") == "plain"  # the same session LangChain and the engine see
    assert key_of(f"{PREFIX}unknown") is None


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(InvalidSessionIdError):
        active_session_id(5)  # type: ignore[arg-type]
