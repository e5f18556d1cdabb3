"""The engine's own event loop, in a daemon thread: the one place sync and async callers meet.

asyncpg pools and redis.asyncio connections are bound to the loop that created them. Keeping them all on one
private loop makes the sync API safe from any thread (worker threads while another loop runs, Jupyter's
running loop, many threads at once) and lets async callers on any loop share the same pools.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EngineLoop:
    def __init__(self, name: str = "hybrid-memory") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    try:
                        loop.run_forever()
                    finally:
                        loop.close()

                # Not waiting for the loop to run: callbacks scheduled before it starts run when it does, and a
                # wait here would block the first async caller's own loop.
                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def in_loop(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the engine loop and wait for it (the sync API)."""
        if self.in_loop():
            coro.close()
            raise RuntimeError("the sync API cannot be called from the engine's own loop; use the async API")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError("hybrid-memory call timed out") from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the engine loop from any loop (the async API)."""
        loop = self.loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _request_stop(self) -> threading.Thread | None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return None
        loop.call_soon_threadsafe(loop.stop)  # the thread then closes the loop
        return None if thread is threading.current_thread() else thread

    def stop(self) -> None:
        thread = self._request_stop()
        if thread is not None:
            thread.join(5)

    async def astop(self) -> None:
        """`stop` for async callers: waits for the thread without blocking the caller's loop."""
        thread = self._request_stop()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5)


def close_with_loop(close: Callable[[], Awaitable[None]], closed: Callable[[], bool]) -> Callable[[], None]:
    """Await `close()` when the running loop shuts down, unless `closed()` by then, so that connections opened
    on a caller's loop never outlive it. Returns what ends that hook at once; `close` calls it.

    `asyncio.run`, `asyncio.Runner` and pytest-asyncio finalize a loop's async generators before closing it: a
    generator suspended for the client's whole life is that hook.
    """
    async def lifetime() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not closed():
                await close()

    gen = lifetime()
    with contextlib.suppress(StopIteration):
        gen.asend(None).send(None)  # the first step registers the generator with the running loop

    def end() -> None:
        # Finishes at once (closed() is true, nothing to await); from inside its own finally it is running.
        with contextlib.suppress(StopIteration, RuntimeError):
            gen.aclose().send(None)

    return end
