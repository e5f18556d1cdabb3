"""Bringing an engine's per-loop PostgreSQL connection up before a test relies on it."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def own_loop_connection(memory: Any) -> None:
    """Give the running loop its own Redis client and PostgreSQL connection (cold reads then stay on it), and
    wait until the background fills of the reads that opened it are done."""
    loop = asyncio.get_running_loop()
    for _ in range(200):
        await memory.ainvalidate_session("warm-up")
        await memory.aget_recent_messages("warm-up")  # a miss: the loop's connection opens in the background
        conn = memory._core.loop_stores.get(loop)
        if conn is not None and conn.conn is not None:
            await asyncio.to_thread(no_fill_pending, memory)
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the loop's PostgreSQL connection did not open")


def no_fill_pending(memory: Any) -> None:
    """Wait until no background fill of the engine is pending (a test holding fills must hold only its own)."""
    deadline = time.monotonic() + 10
    while memory._core.fills and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not memory._core.fills
