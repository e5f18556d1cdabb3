"""Open, use, close: every connection and transport is closed, whichever loops the caller used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import PG_URL, REDIS_URL

SCRIPT = r'''
import asyncio, gc, sys
from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

def make():
    return HybridMemory(HybridConfig(database_url=sys.argv[2], redis_url=sys.argv[3], namespace=sys.argv[4]))

async def use(memory, sid):
    for _ in range(3):  # from the second call on, this loop has a Redis connection of its own
        await memory.aadd_messages(sid, [Message("human", "hi")])
        await memory.aget_recent_messages(sid)
        await memory.aget_context(sid)

case = sys.argv[1]
if case == "sync":
    memory = make()
    memory.add_messages("s", [Message("human", "hi")])
    memory.get_recent_messages("s"); memory.get_context("s"); memory.get_messages("s")
    memory.close()
elif case == "async":
    async def main():
        memory = make()
        await use(memory, "a")
        await memory.aclose()
    asyncio.run(main())
elif case == "loop-ended-then-sync-close":
    memory = make()
    asyncio.run(use(memory, "b"))  # the loop ends while the memory is open
    gc.collect()
    memory.close()
elif case == "closed-on-another-loop":
    memory = make()
    asyncio.run(use(memory, "c"))
    asyncio.run(use(memory, "c"))
    asyncio.run(memory.aclose())
elif case == "sync-close-from-another-thread":
    import threading
    memory = make()
    ready, done = threading.Event(), threading.Event()
    async def serve():
        await use(memory, "d")
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.01)
    t = threading.Thread(target=asyncio.run, args=(serve(),))
    t.start(); ready.wait(30)
    memory.close()  # the other thread's loop still runs: its connection is closed there
    done.set(); t.join(30)
gc.collect()
print("closed", case)
'''


@pytest.mark.parametrize("case", ["sync", "async", "loop-ended-then-sync-close", "closed-on-another-loop",
                                  "sync-close-from-another-thread"])
def test_close_leaves_no_unclosed_connection_or_transport(case, namespace):
    out = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", SCRIPT, case, PG_URL,
                          REDIS_URL, namespace], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith(f"closed {case}")
    # A ResourceWarning raised in a finalizer is printed ("Exception ignored in ..."), not propagated.
    assert "ResourceWarning" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr[-3000:]
