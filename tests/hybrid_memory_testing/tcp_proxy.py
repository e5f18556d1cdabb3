"""A TCP forwarder that can simulate a network cut which leaves connections hanging.

`hang()` stops forwarding in both directions without closing anything: bytes already sent sit in buffers,
new connections are accepted (the kernel completes the handshake) but never reach the server, so clients
see exactly what a silent network partition looks like: nothing, until their own timeouts fire.
`hang(up=False)` holds only the server's answers (the requests still arrive and run): a client then acts on
an answer computed before things it did after, which is how tests pin down read/commit races.
`resume()` delivers what was held and forwards again. Nothing is mocked: the server behind is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from .servers import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)
        self._up: asyncio.Event | None = None  # client -> server
        self._down: asyncio.Event | None = None  # server -> client
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted so far (for tests of the proxy itself)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._up, self._down = asyncio.Event(), asyncio.Event()
        self._up.set()
        self._down.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- the fault ---------------------------------------------------------------------------------------
    def hang(self, *, up: bool = True, down: bool = True) -> None:
        """Stop forwarding requests (`up`) and/or answers (`down`), on existing and new connections; keep
        every socket open."""
        self._call(self._set(not up, not down))

    def resume(self) -> None:
        self._call(self._set(True, True))

    @property
    def hanging(self) -> bool:
        return any(ev is not None and not ev.is_set() for ev in (self._up, self._down))

    async def _set(self, up: bool, down: bool) -> None:
        assert self._up is not None and self._down is not None
        for ev, flowing in ((self._up, up), (self._down, down)):
            if flowing:
                ev.set()
            else:
                ev.clear()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- forwarding --------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._up is not None and self._down is not None
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            await self._up.wait()  # a cut network does not even let the connection through
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer, self._up), self._pump(up_reader, writer, self._down))
        except (OSError, asyncio.CancelledError):
            pass  # closing the proxy cancels handlers; end quietly (asyncio logs a cancelled client task)
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                await flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()
