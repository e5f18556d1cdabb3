"""A load-generating writer process for the fault suite. Run as a script: `python writer.py '<json plan>'`.

It imports nothing from tests/, only the engine, so it behaves like any application process. After every
finished call it appends one JSON line to `plan["out"]` (one `os.write` on an O_APPEND file, so a SIGKILL
never leaves a half-known acknowledgement behind):

    {"k": "a", "s": sid, "i": [ids], "q": [seqs], "t0": t, "t1": t}    an acknowledged add (seqs as returned)
    {"k": "r", "s": sid, "i": [ids], "q": [seqs], "t0": t, "t1": t}    a read of the recent window
    {"k": "e", "op": "add"|"read", "s": sid, "e": "Type: text", "typed": bool, "t0": t, "t1": t}
    {"k": "ready", "t": t}   {"k": "end", "t": t, "backlog": n, "close_s": s}

With `"mode": "checkpoint"` the writer is an agent instead: each write is one LangGraph step through
`HybridSaver` (read the thread's latest checkpoint, put the next one with the batch appended to its `messages`,
put a pending write), logged as an add whose seqs are the messages' positions in the list, plus `"c"`, the
checkpoint id; a read is `get_tuple`, logged with the whole list. One worker owns each thread, as LangGraph
expects of a thread's writer.

Times are `time.monotonic()`: CLOCK_MONOTONIC is one clock for every process of the machine, so the parent
can compare them with its own fault timestamps and with other writers' records.
A failed add is retried later with the same message ids (idempotent). SIGTERM: stop, close (which flushes),
write "end", exit 0.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from typing import Any

from langchain_hybrid_memory import HybridConfig, HybridMemory, HybridMemoryError, Message


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.lock = threading.Lock()

    def write(self, **rec: Any) -> None:
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)


class Worker:
    def __init__(self, plan: dict[str, Any], memory: HybridMemory, log: Log, index: int, stop: threading.Event,
                 own: list[str]) -> None:
        self.plan = plan
        self.memory = memory
        self.log = log
        self.stop = stop
        self.index = index
        self.own = own  # shared between the threads of this writer (list appends are atomic)
        self.rng = random.Random(f"{plan['seed']}-{index}")
        self.counter = 0
        self.retry: dict[str, list[Message]] = {}
        self.writes = 0
        self.new_sessions = 0

    def _msg_id(self) -> str:
        self.counter += 1
        return f"{self.plan['wid']}.{self.index}.{self.counter}"

    def _batch(self) -> list[Message]:
        n = self.rng.randint(1, self.plan.get("max_batch", 3))
        pad = "x" * self.plan.get("payload", 40)
        out = []
        for _ in range(n):
            mid = self._msg_id()
            role = "human" if self.counter % 2 else "ai"
            meta = {"n": self.counter, "tag": ["a", {"b": None}]} if self.counter % 5 == 0 else {}
            out.append(Message(role, f"{mid} {pad}", id=mid, metadata=meta))
        return out

    def _pick_write(self) -> str:
        shared = self.plan.get("shared") or []
        if shared and self.rng.random() < self.plan.get("shared_ratio", 0.5):
            return str(self.rng.choice(shared))
        every = self.plan.get("new_every", 0)
        if every and self.writes and self.writes % every == 0:
            self.new_sessions += 1
            sid = f"{self.plan['wid']}-n{self.index}.{self.new_sessions}"
            self.own.append(sid)
            return sid
        return self.rng.choice(self.own)

    def _pick_read(self, last: str) -> str:
        cross = self.plan.get("cross") or []
        shared = self.plan.get("shared") or []
        r = self.rng.random()
        if cross and r < self.plan.get("cross_ratio", 0.3):
            return str(self.rng.choice(cross))
        if shared and r < 0.6:
            return str(self.rng.choice(shared))
        return last

    def add(self, sid: str) -> None:
        batch = self.retry.pop(sid, None) or self._batch()
        t0 = time.monotonic()
        try:
            out = self.memory.add_messages(sid, batch)
        except Exception as exc:
            self._error("add", sid, exc, t0)
            self.retry[sid] = batch
            return
        t1 = time.monotonic()
        self.log.write(k="a", s=sid, i=[m.id for m in out], q=[m.seq for m in out], t0=t0, t1=t1)

    def read(self, sid: str) -> None:
        t0 = time.monotonic()
        try:
            got = self.memory.get_recent_messages(sid)
        except Exception as exc:
            self._error("read", sid, exc, t0)
            return
        t1 = time.monotonic()
        self.log.write(k="r", s=sid, i=[m.id for m in got], q=[m.seq for m in got], t0=t0, t1=t1)

    def _error(self, op: str, sid: str, exc: Exception, t0: float) -> None:
        typed = isinstance(exc, HybridMemoryError)
        self.log.write(k="e", op=op, s=sid, e=f"{type(exc).__name__}: {str(exc)[:300]}", typed=typed, t0=t0,
                       t1=time.monotonic())
        if not typed:
            traceback.print_exc(file=sys.stderr)

    def run(self) -> None:
        rate = float(self.plan.get("rate", 100))
        read_every = int(self.plan.get("read_every", 2))
        start = time.monotonic()
        while not self.stop.is_set():
            due = start + self.writes / rate
            delay = due - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            sid = self._pick_write()
            self.add(sid)
            self.writes += 1
            if read_every and self.writes % read_every == 0:
                self.read(self._pick_read(sid))


class CheckpointWorker(Worker):
    """One agent per thread: every step reads the latest checkpoint and appends to what it read."""

    def __init__(self, *args: Any) -> None:
        from langchain_hybrid_memory.checkpoint import HybridSaver

        super().__init__(*args)
        self.saver = HybridSaver(self.memory)
        self.retry_lc: dict[str, list[Any]] = {}

    def _lc_batch(self) -> list[Any]:
        from langchain_core.messages import AIMessage, HumanMessage

        return [(HumanMessage if m.role == "human" else AIMessage)(m.content, id=m.id) for m in self._batch()]

    @staticmethod
    def _config(sid: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": sid, "checkpoint_ns": ""}}

    def add(self, sid: str) -> None:
        from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

        batch = self.retry_lc.pop(sid, None) or self._lc_batch()
        t0 = time.monotonic()
        try:
            tup = self.saver.get_tuple(self._config(sid))
            base = tup.checkpoint if tup is not None else empty_checkpoint()
            have = list(base["channel_values"].get("messages", []))
            known = {m.id for m in have}  # a retried step whose put did land (then timed out) appends nothing
            messages = have + [m for m in batch if m.id not in known]
            version = self.saver.get_next_version(base["channel_versions"].get("messages"), None)
            checkpoint = create_checkpoint(base, None, len(messages))
            checkpoint["channel_values"] = {"messages": messages}
            checkpoint["channel_versions"] = {**base["channel_versions"], "messages": version}
            stored = self.saver.put(tup.config if tup is not None else self._config(sid), checkpoint,
                                    {"source": "loop", "step": len(messages)}, {"messages": version})
            self.saver.put_writes(stored, [("messages", batch[-1:])], f"task-{batch[-1].id}")
        except Exception as exc:
            self._error("add", sid, exc, t0)
            self.retry_lc[sid] = batch
            return
        t1 = time.monotonic()
        pos = {m.id: i for i, m in enumerate(messages)}
        self.log.write(k="a", s=sid, i=[m.id for m in batch], q=[pos[m.id] for m in batch], t0=t0, t1=t1,
                       c=stored["configurable"]["checkpoint_id"])

    def read(self, sid: str) -> None:
        t0 = time.monotonic()
        try:
            tup = self.saver.get_tuple(self._config(sid))
        except Exception as exc:
            self._error("read", sid, exc, t0)
            return
        t1 = time.monotonic()
        ids = [m.id for m in tup.checkpoint["channel_values"].get("messages", [])] if tup is not None else []
        self.log.write(k="r", s=sid, i=ids, q=list(range(len(ids))), t0=t0, t1=t1)


def main() -> int:
    plan: dict[str, Any] = json.loads(sys.argv[1])
    log = Log(plan["out"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for stacks before killing a hang
    config = HybridConfig(database_url=plan["database_url"], redis_url=plan["redis_url"],
                          namespace=plan["namespace"], **plan.get("config", {}))
    memory = HybridMemory(config)

    def dump_tasks(*_: Any) -> None:  # SIGUSR2: what the engine loop is waiting for (diagnosing a hang)
        loop = memory._core.engine._loop
        for _attempt in range(3):
            try:
                tasks = list(asyncio.all_tasks(loop)) if loop is not None else []
                break
            except RuntimeError:
                continue
        else:
            tasks = []
        print(f"--- {len(tasks)} engine tasks ---", file=sys.stderr)
        for task in tasks:
            print(repr(task)[:300], file=sys.stderr)
            task.print_stack(limit=30, file=sys.stderr)
        sys.stderr.flush()

    signal.signal(signal.SIGUSR2, dump_tasks)
    memory.start()
    log.write(k="ready", t=time.monotonic())
    own = list(plan["own"])
    kind = CheckpointWorker if plan.get("mode") == "checkpoint" else Worker
    workers = [kind(plan, memory, log, i, stop, own) for i in range(int(plan.get("threads", 1)))]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    stop.wait(float(plan.get("max_seconds", 120)))
    stop.set()
    for t in threads:
        t.join(30)
    t0 = time.monotonic()
    backlog = memory.get_cache_stats().backlog
    try:
        memory.close(flush_timeout=float(plan.get("flush_timeout", 30)))
    except Exception:
        traceback.print_exc(file=sys.stderr)
    log.write(k="end", t=time.monotonic(), backlog=backlog, close_s=time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
