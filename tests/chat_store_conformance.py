"""A reusable conformance suite for LlamaIndex chat stores: `BaseChatStore` and `AsyncDBChatStore`.

Subclass `ChatStoreConformance` (provide a `chat_store` fixture: an empty `BaseChatStore`) or
`DBChatStoreConformance` (provide a `db_chat_store` fixture: an empty `AsyncDBChatStore`) in a test module and
name the subclass `Test...`. Capability flags on the class switch off checks a store does not claim to pass
(e.g. `positional_delete = False` for stores whose `delete_message` takes a row id).

Messages are compared by `model_dump(mode="json")`: what a store can keep of a `ChatMessage`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from llama_index.core.base.llms.types import ImageBlock, TextBlock, ToolCallBlock
from llama_index.core.llms import ChatMessage
from llama_index.core.storage.chat_store.base import BaseChatStore
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus

# A 1x1 PNG: image bytes that round-trip through base64.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cf00000301010018dd8db00000000049454e44ae426082")

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
    "quotes \" ' \\ backslash {json} %s {0}",
]


def dump(message: ChatMessage) -> dict[str, Any]:
    return message.model_dump(mode="json")


def dumps(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    return [dump(m) for m in messages]


def texts(messages: Sequence[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def numbered(tag: str, n: int, start: int = 0) -> list[ChatMessage]:
    """`n` text messages, alternating user / assistant, with recognisable contents."""
    return [ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"{tag}-{i}")
            for i in range(start, start + n)]


def sample_messages(tag: str) -> list[ChatMessage]:
    """A message of every shape an app stores: roles, blocks (text, image bytes and URL), tool calls."""
    return [
        ChatMessage(role="system", content=f"{tag} system"),
        ChatMessage(role="user", content=f"{tag} user"),
        ChatMessage(role="user", blocks=[TextBlock(text=f"{tag} look at this"), ImageBlock(image=PNG),
                                         ImageBlock(url="https://example.com/cat.png", detail="low")]),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [
            {"id": f"{tag}-call", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]}),
        ChatMessage(role="tool", content="3", additional_kwargs={"tool_call_id": f"{tag}-call", "name": "add"}),
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id=f"{tag}-c2", tool_name="mul",
                                                            tool_kwargs={"x": 2, "y": [1, 2]})]),
        ChatMessage(role="assistant", content=f"{tag} answer",
                    additional_kwargs={"nested": {"list": [1, 2.5, None, True], "s": "ü"}}),
        ChatMessage(role="developer", content=f"{tag} developer"),
        ChatMessage(role="user"),  # no blocks at all
    ]


def run_in_new_loop_thread(coro_fn: Callable[[], Any]) -> Any:
    """Run `coro_fn()` on a new event loop in a new thread (what LlamaIndex's `asyncio_run` does)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(coro_fn())
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if "error" in out:
        raise out["error"]
    return out.get("value")


class ChatStoreConformance:
    """What every `BaseChatStore` should do. Subclass it and provide the `chat_store` fixture."""

    supports_lone_surrogates = True  # "\ud800" is a valid Python str, but not every store can keep it
    positional_delete = True  # delete_message(key, idx): idx is a position; out of range returns None
    empty_delete_last_returns_none = True  # SimpleChatStore raises IndexError instead
    deleted_keys_disappear = True  # get_keys() forgets a key whose messages were deleted
    serialised_positional_deletes = True  # concurrent delete_message(key, 0) calls remove distinct messages
    supports_insert_at = True  # add_message(key, message, idx=...)
    native_async = True  # the async twins are overridden, not BaseChatStore's to_thread defaults

    # -- basics ------------------------------------------------------------------------------------------
    def test_empty_key_reads_empty(self, chat_store: BaseChatStore) -> None:
        assert chat_store.get_messages("nobody") == []

    def test_append_keeps_order(self, chat_store: BaseChatStore) -> None:
        sent = numbered("order", 40)
        for m in sent:
            chat_store.add_message("k", m)
        assert dumps(chat_store.get_messages("k")) == dumps(sent)

    def test_round_trip_of_every_shape(self, chat_store: BaseChatStore) -> None:
        sent = sample_messages("shape")
        for m in sent:
            chat_store.add_message("k", m)
        got = chat_store.get_messages("k")
        assert dumps(got) == dumps(sent)
        assert got[2].blocks[1].image == sent[2].blocks[1].image  # the image bytes themselves
        assert got[3].additional_kwargs["tool_calls"][0]["id"] == "shape-call"
        assert got[4].additional_kwargs["tool_call_id"] == "shape-call"
        assert isinstance(got[5].blocks[0], ToolCallBlock)

    def test_unicode_and_nul(self, chat_store: BaseChatStore) -> None:
        sent = [ChatMessage(role="user", content=t) for t in UNICODE_SAMPLES]
        sent.append(ChatMessage(role="assistant", content="kw", additional_kwargs={"k\u0000": "v\u0000é"}))
        chat_store.set_messages("unicode \u00e9 🧠", sent)
        assert dumps(chat_store.get_messages("unicode \u00e9 🧠")) == dumps(sent)

    def test_lone_surrogate(self, chat_store: BaseChatStore) -> None:
        if not self.supports_lone_surrogates:
            pytest.skip("this store does not claim to keep lone surrogates")
        sent = [ChatMessage(role="user", content="lone \ud800 surrogate \udfff")]
        chat_store.set_messages("k", sent)
        assert dumps(chat_store.get_messages("k")) == dumps(sent)

    def test_keys_are_isolated(self, chat_store: BaseChatStore) -> None:
        chat_store.add_message("a", ChatMessage(content="for a"))
        chat_store.add_message("b", ChatMessage(content="for b"))
        chat_store.add_message("a/b", ChatMessage(content="for a/b"))
        assert texts(chat_store.get_messages("a")) == ["for a"]
        assert texts(chat_store.get_messages("b")) == ["for b"]
        assert texts(chat_store.get_messages("a/b")) == ["for a/b"]
        assert {"a", "b", "a/b"} <= set(chat_store.get_keys())

    def test_returned_messages_are_fresh(self, chat_store: BaseChatStore) -> None:
        chat_store.add_message("k", ChatMessage(role="system", content="be brief", additional_kwargs={"x": 1}))
        first = chat_store.get_messages("k")
        first[0].blocks.insert(0, TextBlock(text="injected"))
        first[0].additional_kwargs["x"] = 2
        again = chat_store.get_messages("k")
        assert texts(again) == ["be brief"] and again[0].additional_kwargs == {"x": 1}
        assert again[0] is not first[0]

    def test_set_messages_replaces(self, chat_store: BaseChatStore) -> None:
        chat_store.set_messages("k", numbered("old", 5))
        new = numbered("new", 3)
        chat_store.set_messages("k", new)
        assert dumps(chat_store.get_messages("k")) == dumps(new)
        chat_store.set_messages("k", [])
        assert chat_store.get_messages("k") == []

    def test_delete_messages(self, chat_store: BaseChatStore) -> None:
        chat_store.set_messages("k", numbered("d", 4))
        chat_store.add_message("other", ChatMessage(content="stays"))
        gone = chat_store.delete_messages("k")
        assert gone is None or texts(gone) == ["d-0", "d-1", "d-2", "d-3"]
        assert chat_store.get_messages("k") == []
        assert texts(chat_store.get_messages("other")) == ["stays"]
        if self.deleted_keys_disappear:
            assert "k" not in chat_store.get_keys()
        chat_store.add_message("k", ChatMessage(content="after delete"))
        assert texts(chat_store.get_messages("k")) == ["after delete"]

    # -- positional delete -------------------------------------------------------------------------------
    @pytest.mark.parametrize(("idx", "expect_rest"), [
        (0, ["p-1", "p-2", "p-3", "p-4"]),
        (2, ["p-0", "p-1", "p-3", "p-4"]),
        (4, ["p-0", "p-1", "p-2", "p-3"]),
    ], ids=["first", "middle", "last"])
    def test_delete_message_by_position(self, chat_store: BaseChatStore, idx: int, expect_rest: list[str]) -> None:
        if not self.positional_delete:
            pytest.skip("delete_message does not take a position in this store")
        sent = numbered("p", 5)
        chat_store.set_messages("k", sent)
        removed = chat_store.delete_message("k", idx)
        assert removed is not None and dump(removed) == dump(sent[idx])
        assert texts(chat_store.get_messages("k")) == expect_rest

    def test_delete_the_only_message(self, chat_store: BaseChatStore) -> None:
        if not self.positional_delete:
            pytest.skip("delete_message does not take a position in this store")
        chat_store.add_message("k", ChatMessage(content="alone"))
        removed = chat_store.delete_message("k", 0)
        assert removed is not None and removed.content == "alone"
        assert chat_store.get_messages("k") == []
        chat_store.add_message("k", ChatMessage(content="next"))
        assert texts(chat_store.get_messages("k")) == ["next"]

    @pytest.mark.parametrize("idx", [5, 6, 1000, -1], ids=["len", "len+1", "far", "negative"])
    def test_delete_message_out_of_range(self, chat_store: BaseChatStore, idx: int) -> None:
        if not self.positional_delete:
            pytest.skip("delete_message does not take a position in this store")
        chat_store.set_messages("k", numbered("o", 5))
        assert chat_store.delete_message("k", idx) is None
        assert len(chat_store.get_messages("k")) == 5
        assert chat_store.delete_message("missing key", 0) is None

    def test_delete_last_message(self, chat_store: BaseChatStore) -> None:
        sent = numbered("l", 3)
        chat_store.set_messages("k", sent)
        removed = chat_store.delete_last_message("k")
        assert removed is not None and dump(removed) == dump(sent[2])
        assert texts(chat_store.get_messages("k")) == ["l-0", "l-1"]
        chat_store.delete_last_message("k")
        chat_store.delete_last_message("k")
        assert chat_store.get_messages("k") == []
        if self.empty_delete_last_returns_none:
            assert chat_store.delete_last_message("k") is None
            assert chat_store.delete_last_message("never written") is None

    def test_insert_at_position(self, chat_store: BaseChatStore) -> None:
        if not self.supports_insert_at:
            pytest.skip("add_message has no idx in this store")
        chat_store.set_messages("k", numbered("i", 3))
        chat_store.add_message("k", ChatMessage(content="at-1"), idx=1)  # type: ignore[call-arg]
        chat_store.add_message("k", ChatMessage(content="at-0"), idx=0)  # type: ignore[call-arg]
        chat_store.add_message("k", ChatMessage(content="at-end"), idx=5)  # type: ignore[call-arg]
        assert texts(chat_store.get_messages("k")) == ["at-0", "i-0", "at-1", "i-1", "i-2", "at-end"]

    # -- async -------------------------------------------------------------------------------------------
    def test_async_twins_are_native(self, chat_store: BaseChatStore) -> None:
        if not self.native_async:
            pytest.skip("this store uses BaseChatStore's thread-pool async defaults")
        for name in ("aset_messages", "aget_messages", "async_add_message", "adelete_messages",
                     "adelete_message", "adelete_last_message", "aget_keys"):
            assert getattr(type(chat_store), name) is not getattr(BaseChatStore, name), name

    async def test_sync_async_parity(self, chat_store: BaseChatStore) -> None:
        """The same script through the sync API (in a worker thread) and the async API: same results."""

        def sync_script(key: str) -> list[Any]:
            out: list[Any] = []
            for m in sample_messages("par"):
                chat_store.add_message(key, m)
            out.append(dumps(chat_store.get_messages(key)))
            removed = chat_store.delete_message(key, 1) if self.positional_delete else None
            out.append(removed and dump(removed))
            out.append(dump(chat_store.delete_last_message(key) or ChatMessage()))
            out.append(dumps(chat_store.get_messages(key)))
            chat_store.set_messages(key, numbered("set", 3))
            out.append(dumps(chat_store.get_messages(key)))
            out.append(key in chat_store.get_keys())
            chat_store.delete_messages(key)
            out.append(dumps(chat_store.get_messages(key)))
            return out

        async def async_script(key: str) -> list[Any]:
            out: list[Any] = []
            for m in sample_messages("par"):
                await chat_store.async_add_message(key, m)
            out.append(dumps(await chat_store.aget_messages(key)))
            removed = await chat_store.adelete_message(key, 1) if self.positional_delete else None
            out.append(removed and dump(removed))
            out.append(dump(await chat_store.adelete_last_message(key) or ChatMessage()))
            out.append(dumps(await chat_store.aget_messages(key)))
            await chat_store.aset_messages(key, numbered("set", 3))
            out.append(dumps(await chat_store.aget_messages(key)))
            out.append(key in await chat_store.aget_keys())
            await chat_store.adelete_messages(key)
            out.append(dumps(await chat_store.aget_messages(key)))
            return out

        via_sync = await asyncio.to_thread(sync_script, "sync-key")
        via_async = await async_script("async-key")
        assert via_sync == via_async
        assert via_sync[0] == dumps(sample_messages("par"))

    async def test_sync_api_from_worker_thread_while_loop_runs(self, chat_store: BaseChatStore) -> None:
        def work() -> list[str | None]:
            for m in numbered("w", 6):
                chat_store.add_message("k", m)
            chat_store.delete_last_message("k")
            return texts(chat_store.get_messages("k"))

        # The loop keeps running (this task sleeps) while the thread works.
        got, _ = await asyncio.gather(asyncio.to_thread(work), asyncio.sleep(0.01))
        assert got == ["w-0", "w-1", "w-2", "w-3", "w-4"]
        assert texts(await chat_store.aget_messages("k")) == got

    # -- concurrency -------------------------------------------------------------------------------------
    async def test_concurrent_appends_threads_and_tasks(self, chat_store: BaseChatStore) -> None:
        per, writers = 12, 4

        def thread_writer(w: int) -> None:
            for i in range(per):
                chat_store.add_message("k", ChatMessage(content=f"t{w}-{i}"))

        async def task_writer(w: int) -> None:
            for i in range(per):
                await chat_store.async_add_message("k", ChatMessage(content=f"a{w}-{i}"))

        await asyncio.gather(*(asyncio.to_thread(thread_writer, w) for w in range(writers)),
                             *(task_writer(w) for w in range(writers)))
        got = [t or "" for t in texts(await chat_store.aget_messages("k"))]
        assert len(got) == 2 * per * writers and len(set(got)) == len(got)
        for prefix in [f"t{w}-" for w in range(writers)] + [f"a{w}-" for w in range(writers)]:
            mine = [t for t in got if t.startswith(prefix)]
            assert mine == [f"{prefix}{i}" for i in range(per)]  # each writer's order is kept

    async def test_concurrent_positional_deletes(self, chat_store: BaseChatStore) -> None:
        if not (self.positional_delete and self.serialised_positional_deletes):
            pytest.skip("positional deletes are not serialised in this store")
        chat_store.set_messages("k", numbered("c", 20))
        removed = await asyncio.gather(*(asyncio.to_thread(chat_store.delete_message, "k", 0) for _ in range(4)),
                                       *(chat_store.adelete_message("k", 0) for _ in range(4)))
        got = sorted(m.content or "" for m in removed if m is not None)
        assert got == sorted(f"c-{i}" for i in range(8))  # eight distinct messages, the eight oldest
        assert texts(await chat_store.aget_messages("k")) == [f"c-{i}" for i in range(8, 20)]


class DBChatStoreConformance:
    """What every `AsyncDBChatStore` (the store behind `Memory`) should do. Provide `db_chat_store`."""

    supports_lone_surrogates = True
    positional_delete = True  # delete_message(key, idx) takes a position among ACTIVE messages
    loops_and_threads = True  # callable from any event loop and thread (Memory's sync methods need it)

    ACTIVE = MessageStatus.ACTIVE
    ARCHIVED = MessageStatus.ARCHIVED

    async def test_add_and_get_in_order(self, db_chat_store: AsyncDBChatStore) -> None:
        sent = numbered("o", 30)
        for m in sent[:10]:
            await db_chat_store.add_message("k", m)
        await db_chat_store.add_messages("k", sent[10:])
        assert dumps(await db_chat_store.get_messages("k")) == dumps(sent)
        assert await db_chat_store.count_messages("k") == 30
        assert await db_chat_store.get_messages("nobody") == []
        assert await db_chat_store.count_messages("nobody") == 0

    async def test_round_trip_of_every_shape(self, db_chat_store: AsyncDBChatStore) -> None:
        sent = sample_messages("shape")
        await db_chat_store.add_messages("k", sent)
        assert dumps(await db_chat_store.get_messages("k")) == dumps(sent)

    async def test_unicode_and_nul(self, db_chat_store: AsyncDBChatStore) -> None:
        sent = [ChatMessage(role="user", content=t) for t in UNICODE_SAMPLES]
        await db_chat_store.set_messages("ключ \u00e9", sent)
        assert dumps(await db_chat_store.get_messages("ключ \u00e9")) == dumps(sent)
        if self.supports_lone_surrogates:
            lone = [ChatMessage(content="lone \ud800")]
            await db_chat_store.set_messages("lone", lone)
            assert dumps(await db_chat_store.get_messages("lone")) == dumps(lone)

    async def test_statuses_and_archive(self, db_chat_store: AsyncDBChatStore) -> None:
        sent = numbered("s", 10)
        await db_chat_store.add_messages("k", sent)
        archived = await db_chat_store.archive_oldest_messages("k", 3)
        assert dumps(archived) == dumps(sent[:3])
        assert dumps(await db_chat_store.get_messages("k", status=self.ACTIVE)) == dumps(sent[3:])
        assert dumps(await db_chat_store.get_messages("k", status=self.ARCHIVED)) == dumps(sent[:3])
        assert dumps(await db_chat_store.get_messages("k", status=None)) == dumps(sent)
        assert await db_chat_store.count_messages("k", self.ACTIVE) == 7
        assert await db_chat_store.count_messages("k", self.ARCHIVED) == 3
        assert await db_chat_store.count_messages("k", None) == 10
        assert texts(await db_chat_store.archive_oldest_messages("k", 2)) == ["s-3", "s-4"]
        assert texts(await db_chat_store.get_messages("k", status=None)) == texts(sent)  # still in order
        assert await db_chat_store.archive_oldest_messages("k", 0) == []

    async def test_archive_more_than_there_is(self, db_chat_store: AsyncDBChatStore) -> None:
        await db_chat_store.add_messages("k", numbered("m", 3))
        assert texts(await db_chat_store.archive_oldest_messages("k", 10)) == ["m-0", "m-1", "m-2"]
        assert await db_chat_store.get_messages("k") == []
        assert await db_chat_store.archive_oldest_messages("k", 1) == []
        assert texts(await db_chat_store.get_messages("k", status=self.ARCHIVED)) == ["m-0", "m-1", "m-2"]

    async def test_add_with_status(self, db_chat_store: AsyncDBChatStore) -> None:
        await db_chat_store.add_message("k", ChatMessage(content="active"))
        await db_chat_store.add_message("k", ChatMessage(content="archived"), status=self.ARCHIVED)
        await db_chat_store.add_messages("k", numbered("arch", 2), status=self.ARCHIVED)
        assert texts(await db_chat_store.get_messages("k")) == ["active"]
        assert texts(await db_chat_store.get_messages("k", status=self.ARCHIVED)) == ["archived", "arch-0",
                                                                                       "arch-1"]
        assert texts(await db_chat_store.get_messages("k", status=None)) == ["active", "archived", "arch-0",
                                                                              "arch-1"]

    @pytest.mark.parametrize("status", [MessageStatus.ACTIVE, MessageStatus.ARCHIVED, None],
                             ids=["active", "archived", "all"])
    async def test_limit_and_offset(self, db_chat_store: AsyncDBChatStore, status: MessageStatus | None) -> None:
        await db_chat_store.add_messages("k", numbered("x", 12))
        await db_chat_store.archive_oldest_messages("k", 5)
        full = texts(await db_chat_store.get_messages("k", status=status))
        assert len(full) == {MessageStatus.ACTIVE: 7, MessageStatus.ARCHIVED: 5, None: 12}[status]  # type: ignore[index]
        for limit, offset in [(3, None), (None, 2), (2, 3), (0, 0), (100, 1), (3, 100)]:
            got = texts(await db_chat_store.get_messages("k", status=status, limit=limit, offset=offset))
            start = offset or 0
            assert got == full[start:None if limit is None else start + limit], (limit, offset)

    async def test_set_messages_replaces_every_status(self, db_chat_store: AsyncDBChatStore) -> None:
        await db_chat_store.add_messages("k", numbered("old", 6))
        await db_chat_store.archive_oldest_messages("k", 2)
        new = numbered("new", 3)
        await db_chat_store.set_messages("k", new)
        assert dumps(await db_chat_store.get_messages("k", status=None)) == dumps(new)
        await db_chat_store.set_messages("k", numbered("arch", 2), status=self.ARCHIVED)
        assert await db_chat_store.get_messages("k") == []
        assert texts(await db_chat_store.get_messages("k", status=self.ARCHIVED)) == ["arch-0", "arch-1"]

    async def test_delete_messages_by_status(self, db_chat_store: AsyncDBChatStore) -> None:
        async def fill(key: str) -> None:
            await db_chat_store.add_messages(key, numbered(key, 5))
            await db_chat_store.archive_oldest_messages(key, 2)

        for key in ("a", "b", "c"):
            await fill(key)
        await db_chat_store.delete_messages("a", status=self.ACTIVE)
        await db_chat_store.delete_messages("b", status=self.ARCHIVED)
        await db_chat_store.delete_messages("c")
        assert (await db_chat_store.count_messages("a", self.ACTIVE),
                await db_chat_store.count_messages("a", self.ARCHIVED)) == (0, 2)
        assert (await db_chat_store.count_messages("b", self.ACTIVE),
                await db_chat_store.count_messages("b", self.ARCHIVED)) == (3, 0)
        assert await db_chat_store.count_messages("c", None) == 0
        keys = await db_chat_store.get_keys()
        assert {"a", "b"} <= set(keys) and "c" not in keys

    async def test_delete_oldest_messages(self, db_chat_store: AsyncDBChatStore) -> None:
        await db_chat_store.add_messages("k", numbered("d", 5))
        assert texts(await db_chat_store.delete_oldest_messages("k", 2)) == ["d-0", "d-1"]
        assert texts(await db_chat_store.get_messages("k", status=None)) == ["d-2", "d-3", "d-4"]
        assert texts(await db_chat_store.delete_oldest_messages("k", 9)) == ["d-2", "d-3", "d-4"]
        assert await db_chat_store.delete_oldest_messages("k", 1) == []

    @pytest.mark.parametrize(("idx", "rest"), [
        (0, ["p-1", "p-2", "p-3", "p-4"]), (2, ["p-0", "p-1", "p-3", "p-4"]), (4, ["p-0", "p-1", "p-2", "p-3"]),
    ], ids=["first", "middle", "last"])
    async def test_delete_message_by_position(self, db_chat_store: AsyncDBChatStore, idx: int,
                                              rest: list[str]) -> None:
        if not self.positional_delete:
            pytest.skip("delete_message does not take a position in this store")
        sent = numbered("p", 5)
        await db_chat_store.add_messages("k", sent)
        removed = await db_chat_store.delete_message("k", idx)
        assert removed is not None and dump(removed) == dump(sent[idx])
        assert texts(await db_chat_store.get_messages("k")) == rest

    async def test_delete_only_and_out_of_range(self, db_chat_store: AsyncDBChatStore) -> None:
        if not self.positional_delete:
            pytest.skip("delete_message does not take a position in this store")
        await db_chat_store.add_message("k", ChatMessage(content="alone"))
        assert await db_chat_store.delete_message("k", 1) is None
        assert await db_chat_store.delete_message("k", -1) is None
        removed = await db_chat_store.delete_message("k", 0)
        assert removed is not None and removed.content == "alone"
        assert await db_chat_store.get_messages("k") == []
        assert await db_chat_store.delete_message("k", 0) is None
        assert await db_chat_store.delete_message("never", 0) is None

    async def test_returned_messages_are_fresh(self, db_chat_store: AsyncDBChatStore) -> None:
        await db_chat_store.add_message("k", ChatMessage(role="system", content="rules"))
        first = await db_chat_store.get_messages("k")
        first[0].blocks = [TextBlock(text="memory block"), *first[0].blocks]  # what Memory.aget does
        first[0].additional_kwargs["session_id"] = "k"  # what memory blocks' aput does
        again = await db_chat_store.get_messages("k")
        assert dumps(again) == dumps([ChatMessage(role="system", content="rules")])

    async def test_get_keys(self, db_chat_store: AsyncDBChatStore) -> None:
        await db_chat_store.add_message("one", ChatMessage(content="x"))
        await db_chat_store.add_message("two", ChatMessage(content="y"), status=self.ARCHIVED)
        keys = await db_chat_store.get_keys()
        assert {"one", "two"} <= set(keys) and len(keys) == len(set(keys))

    async def test_other_loops_and_threads(self, db_chat_store: AsyncDBChatStore) -> None:
        """Memory's sync methods run each coroutine on a new loop in a worker thread: same results."""
        if not self.loops_and_threads:
            pytest.skip("this store is bound to one event loop")
        sent = numbered("l", 6)

        async def script(key: str) -> list[Any]:
            await db_chat_store.add_messages(key, sent)
            archived = await db_chat_store.archive_oldest_messages(key, 2)
            return [dumps(archived), dumps(await db_chat_store.get_messages(key, status=None)),
                    await db_chat_store.count_messages(key)]

        elsewhere = await asyncio.to_thread(run_in_new_loop_thread, lambda: script("thread-key"))
        here = await script("loop-key")
        assert elsewhere == here == [dumps(sent[:2]), dumps(sent), 4]

    async def test_concurrent_archivers_and_writers(self, db_chat_store: AsyncDBChatStore) -> None:
        """Writers append while archivers archive: nothing lost, nothing twice, archived = oldest."""
        if not self.loops_and_threads:
            pytest.skip("this store is bound to one event loop")
        key, per = "busy", 15
        await db_chat_store.add_messages(key, numbered("seed", 10))
        returned: list[list[ChatMessage]] = []
        stop = asyncio.Event()

        async def writer(tag: str) -> None:
            for i in range(per):
                await db_chat_store.add_message(key, ChatMessage(content=f"{tag}-{i}"))
                await asyncio.sleep(random.random() * 0.002)

        async def archiver(until: Callable[[], bool]) -> None:
            while not until():
                returned.append(await db_chat_store.archive_oldest_messages(key, 3))
                await asyncio.sleep(random.random() * 0.002)

        async def thread_writer_and_archiver(tag: str) -> None:
            # Another loop in another thread, as Memory's sync wrappers do.
            await writer(tag)
            returned.append(await db_chat_store.archive_oldest_messages(key, 2))

        writers = [asyncio.create_task(writer(f"w{w}")) for w in range(3)]
        archivers = [asyncio.create_task(archiver(stop.is_set)) for _ in range(3)]
        threads = [asyncio.to_thread(run_in_new_loop_thread, lambda t=t: thread_writer_and_archiver(t))
                   for t in ("x0", "x1")]
        await asyncio.gather(*writers, *threads)
        stop.set()
        await asyncio.gather(*archivers)

        everything = texts(await db_chat_store.get_messages(key, status=None))
        archived = texts(await db_chat_store.get_messages(key, status=self.ARCHIVED))
        active = texts(await db_chat_store.get_messages(key, status=self.ACTIVE))
        expected = {f"seed-{i}" for i in range(10)} | {f"{t}-{i}" for t in ("w0", "w1", "w2", "x0", "x1")
                                                         for i in range(per)}
        assert len(everything) == len(expected) and set(everything) == expected  # nothing lost or doubled
        flat = [m.content for batch in returned for m in batch]
        assert len(flat) == len(set(flat)), "two archive calls returned the same message"
        assert sorted(flat) == sorted(archived)  # archived = exactly what the calls returned
        assert everything == archived + active  # the archived ones were always the oldest
        for tag in ("w0", "w1", "w2", "x0", "x1"):
            assert [t for t in everything if t and t.startswith(f"{tag}-")] == [f"{tag}-{i}" for i in range(per)]
