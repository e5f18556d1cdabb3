"""A reusable conformance suite for LangChain `BaseChatMessageHistory` implementations.

Subclass `ChatHistoryConformance` in a test module (name the subclass `Test...`) and provide the
`history_factory` fixture: `factory(session_id) -> BaseChatMessageHistory`, a new object per call, all on one
store that starts empty. Histories that show a bounded window override `read_all` / `aread_all` to read the
whole session; every other check stays within 20 messages.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
)

Factory = Callable[[str], BaseChatMessageHistory]

UNICODE_SAMPLES = [
    "héllo wörld",
    "日本語のテキスト",
    "emoji 🧠 family 👩‍👩‍👧 flag 🇫🇷",
    "rtl עברית العربية",
    "combining e\u0301 vs é",
    "\u0000",
    "nul \u0000 in the middle\u0000",
    "line\nbreak\ttab\r\n",
    "separators \u2028 \u2029 bom \ufeff",
    "",
    "quotes \" ' \\ backslash {json}",
]


def comparable(message: BaseMessage, *, with_id: bool = True) -> dict[str, Any]:
    """Everything LangChain serialises about a message (optionally without its id)."""
    d = message_to_dict(message)
    if not with_id:
        d["data"] = {k: v for k, v in d["data"].items() if k != "id"}
    return d


def same_messages(got: Sequence[BaseMessage], sent: Sequence[BaseMessage]) -> bool:
    """Equal, message for message, ids included (None where none was given), as `InMemoryChatMessageHistory`
    returns them."""
    if len(got) != len(sent):
        return False
    return all(comparable(g) == comparable(s) for g, s in zip(got, sent, strict=True))


def sample_messages(tag: str) -> list[BaseMessage]:
    """One of every message type, with their fields set."""
    return [
        SystemMessage(f"{tag} system", id=f"{tag}-s"),
        HumanMessage(f"{tag} human", id=f"{tag}-h", name="alice"),
        AIMessage("", id=f"{tag}-a", tool_calls=[{"name": "f", "args": {"x": 1}, "id": f"{tag}-call"}]),
        ToolMessage("42", id=f"{tag}-t", tool_call_id=f"{tag}-call", name="f"),
        AIMessage(f"{tag} answer", id=f"{tag}-a2"),
        ChatMessage(f"{tag} chat", role="critic", id=f"{tag}-c"),
        FunctionMessage(f"{tag} fn", name="legacy_fn", id=f"{tag}-f"),
    ]


class ChatHistoryConformance:
    """The behaviour every chat history should have. Subclass it and provide `history_factory`."""

    supports_lone_surrogates = True  # "\ud800" is a valid Python str, but not every store can keep it
    concurrent_writers = 8
    messages_per_writer = 10

    @pytest.fixture
    def history_factory(self) -> Factory:
        raise NotImplementedError("provide a history_factory fixture")

    def read_all(self, history: BaseChatMessageHistory) -> list[BaseMessage]:
        return history.messages

    async def aread_all(self, history: BaseChatMessageHistory) -> list[BaseMessage]:
        return await history.aget_messages()

    @staticmethod
    def sid() -> str:
        return f"conf-{uuid.uuid4().hex[:10]}"

    # -- basics ------------------------------------------------------------------------------------------
    async def test_new_session_is_empty(self, history_factory: Factory) -> None:
        sid = self.sid()
        assert history_factory(sid).messages == []
        assert await history_factory(sid).aget_messages() == []

    def test_sync_adds_keep_order(self, history_factory: Factory) -> None:
        sid = self.sid()
        history = history_factory(sid)
        history.add_messages([HumanMessage("one"), AIMessage("two")])
        history.add_message(HumanMessage("three"))
        history.add_user_message("four")
        history.add_ai_message("five")
        history.add_messages([])
        got = history_factory(sid).messages
        assert [(m.type, m.content) for m in got] == [
            ("human", "one"), ("ai", "two"), ("human", "three"), ("human", "four"), ("ai", "five")]
        assert got == history.messages

    async def test_async_adds_keep_order(self, history_factory: Factory) -> None:
        sid = self.sid()
        history = history_factory(sid)
        for i in range(6):
            await history.aadd_messages([HumanMessage(f"q{i}"), AIMessage(f"a{i}")])
        got = await history_factory(sid).aget_messages()
        assert [m.content for m in got] == [x for i in range(6) for x in (f"q{i}", f"a{i}")]

    async def test_sync_and_async_agree(self, history_factory: Factory) -> None:
        sent = sample_messages("p")
        sync_sid, async_sid = self.sid(), self.sid()
        history_factory(sync_sid).add_messages(sent)
        await history_factory(async_sid).aadd_messages(sent)
        sync_view = history_factory(sync_sid).messages
        assert same_messages(sync_view, sent)
        assert same_messages(await history_factory(sync_sid).aget_messages(), sync_view)
        assert same_messages(history_factory(async_sid).messages, sent)
        assert same_messages(await history_factory(async_sid).aget_messages(), sent)

    def test_every_message_type_round_trips(self, history_factory: Factory) -> None:
        sid = self.sid()
        sent = sample_messages("rt")
        history_factory(sid).add_messages(sent)
        got = history_factory(sid).messages
        assert [type(m) for m in got] == [type(m) for m in sent]
        assert got == sent

    def test_ids_are_kept(self, history_factory: Factory) -> None:
        sid = self.sid()
        history_factory(sid).add_messages([HumanMessage("a", id="id-a"), AIMessage("b", id="id-b")])
        assert [m.id for m in history_factory(sid).messages] == ["id-a", "id-b"]

    def test_messages_without_ids_come_back_equal(self, history_factory: Factory) -> None:
        sid = self.sid()
        sent = [HumanMessage("hi"), AIMessage("hello", response_metadata={"model": "m"}), HumanMessage("bye")]
        history = history_factory(sid)
        history.add_messages(sent)
        assert self.read_all(history) == sent  # `==` as a user writes it: ids included, None stays None
        assert self.read_all(history_factory(sid)) == sent

    def test_returned_list_is_a_copy(self, history_factory: Factory) -> None:
        sid = self.sid()
        history = history_factory(sid)
        history.add_messages([HumanMessage("keep")])
        history.messages.append(AIMessage("intruder"))
        history.messages.clear()
        assert [m.content for m in history.messages] == ["keep"]
        assert [m.content for m in history_factory(sid).messages] == ["keep"]

    def test_str_is_the_buffer(self, history_factory: Factory) -> None:
        sid = self.sid()
        history = history_factory(sid)
        history.add_messages([HumanMessage("hi"), AIMessage("hello")])
        assert str(history) == "Human: hi\nAI: hello"

    # -- clear -------------------------------------------------------------------------------------------
    def test_clear(self, history_factory: Factory) -> None:
        sid, other = self.sid(), self.sid()
        history = history_factory(sid)
        history.add_messages([HumanMessage("gone"), AIMessage("gone too")])
        history_factory(other).add_messages([HumanMessage("stays")])
        history.clear()
        assert history.messages == []
        assert history_factory(sid).messages == []
        assert [m.content for m in history_factory(other).messages] == ["stays"]
        history.add_messages([HumanMessage("after")])
        assert [m.content for m in history_factory(sid).messages] == ["after"]
        history_factory(self.sid()).clear()  # clearing an unknown session is fine

    async def test_aclear(self, history_factory: Factory) -> None:
        sid = self.sid()
        history = history_factory(sid)
        await history.aadd_messages([HumanMessage("gone")])
        await history.aclear()
        assert await history.aget_messages() == []
        assert await history_factory(sid).aget_messages() == []
        await history.aadd_messages([HumanMessage("after")])
        assert [m.content for m in await history_factory(sid).aget_messages()] == ["after"]

    # -- isolation and visibility --------------------------------------------------------------------------
    def test_sessions_are_isolated(self, history_factory: Factory) -> None:
        a, b = self.sid(), self.sid()
        history_factory(a).add_messages([HumanMessage("for a")])
        history_factory(b).add_messages([HumanMessage("for b")])
        assert [m.content for m in history_factory(a).messages] == ["for a"]
        assert [m.content for m in history_factory(b).messages] == ["for b"]

    def test_a_new_object_sees_earlier_writes(self, history_factory: Factory) -> None:
        sid = self.sid()
        history_factory(sid).add_messages([HumanMessage("first")])
        history_factory(sid).add_messages([AIMessage("second")])
        assert [m.content for m in history_factory(sid).messages] == ["first", "second"]

    # -- content -----------------------------------------------------------------------------------------
    async def test_unicode_and_nul_round_trip(self, history_factory: Factory) -> None:
        sid = self.sid()
        sent: list[BaseMessage] = [HumanMessage(text, id=f"u{i}") for i, text in enumerate(UNICODE_SAMPLES)]
        sent.append(AIMessage([{"type": "text", "text": "block \u0000 ✓"}], id="u-block",
                              additional_kwargs={"note": "ключ \u0000"}, name="名前"))
        history_factory(sid).add_messages(sent)
        assert history_factory(sid).messages == sent
        assert await history_factory(sid).aget_messages() == sent

    def test_lone_surrogate_round_trips(self, history_factory: Factory) -> None:
        if not self.supports_lone_surrogates:
            pytest.skip("this store does not keep lone surrogates")
        sid = self.sid()
        sent = [HumanMessage("half a pair: \ud800 and \udfff", id="sur")]
        history_factory(sid).add_messages(sent)
        assert history_factory(sid).messages == sent

    # -- concurrency -------------------------------------------------------------------------------------
    def _check_writers(self, got: Sequence[BaseMessage]) -> None:
        ids = [m.id for m in got]
        expected = {f"w{w}-{i}" for w in range(self.concurrent_writers) for i in range(self.messages_per_writer)}
        assert len(ids) == len(set(ids)), "a message was stored twice"
        assert set(ids) == expected, "a message was lost or invented"
        for w in range(self.concurrent_writers):
            mine = [i for i in ids if i is not None and i.startswith(f"w{w}-")]
            assert mine == [f"w{w}-{i}" for i in range(self.messages_per_writer)], f"writer {w} out of order"

    def test_concurrent_adders_threads(self, history_factory: Factory) -> None:
        sid = self.sid()
        barrier = threading.Barrier(self.concurrent_writers)
        errors: list[BaseException] = []

        def writer(w: int) -> None:
            try:
                history = history_factory(sid)
                barrier.wait()
                for i in range(self.messages_per_writer):
                    history.add_messages([HumanMessage(f"{w}/{i}", id=f"w{w}-{i}")])
            except BaseException as exc:  # surfaced below: a thread's exception would be lost
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(self.concurrent_writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        self._check_writers(self.read_all(history_factory(sid)))

    async def test_concurrent_adders_tasks(self, history_factory: Factory) -> None:
        sid = self.sid()

        async def writer(w: int) -> None:
            history = history_factory(sid)
            for i in range(self.messages_per_writer):
                await history.aadd_messages([HumanMessage(f"{w}/{i}", id=f"w{w}-{i}")])
                await asyncio.sleep(0)

        await asyncio.gather(*(writer(w) for w in range(self.concurrent_writers)))
        self._check_writers(await self.aread_all(history_factory(sid)))
