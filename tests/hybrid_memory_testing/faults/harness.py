"""The fault harness: writer processes, the fault timeline, and the verdict after each fault.

Nothing is mocked. Writers are separate Python processes (`writer.py`) on real servers; the parent only
injects faults and then compares three sources of truth:

* what writers were told (their acknowledgement logs),
* what PostgreSQL holds (`"<namespace>".messages`),
* what Redis holds (each session's window list and meta hash) and what the public API reads back.

Checks (each counted, never sampled):

* lost: an acknowledged id absent from PostgreSQL (in its session);
* duplicated: an id stored more than once;
* out of order: a stored seq differs from the acknowledged one, a call's messages are not in call order, or an
  add that finished before another began is ordered after it (one order per session, consistent with time);
* stale read: a read that is not the contiguous tail-so-far of the final order (phantom, hole, wrong seq,
  window cut short) or misses a message whose add had finished before the read began. Reads that start between
  the fault and `recovered_at` are reported apart ("in fault"); every other one must be clean;
* cache != PG: a complete cached window (meta present, not partial, its recorded length and id set intact: what
  the engine would serve) that is not PostgreSQL's tail;
* after recovery, a fresh process reads every session twice through the public API: it must get the tail.

In checkpoint mode (`FaultRun(..., mode="checkpoint")`) the writers are agents stepping LangGraph threads
through `HybridSaver` and the same checks apply to each thread's `messages` list, a message's seq being its
position in the list: PostgreSQL's truth is the thread's latest checkpoint as `list(limit=1)` folds it from
PostgreSQL after the outbox is drained, plus every acknowledged checkpoint id (one missing counts as lost); a
read is the whole list; "cache != PG" compares the latest checkpoint id Redis holds for the thread with
PostgreSQL's; the fresh process reads each thread's latest checkpoint twice.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, HybridMemoryError
from langchain_hybrid_memory.keys import KeyLayout
from langchain_hybrid_memory.messages import decode_element

WRITER = str(Path(__file__).with_name("writer.py"))
SHARDS = 64  # HybridConfig.outbox_shards default; the writers use it too

# Small bounds so that detection and recovery take well under a second (short timeouts, frequent probes).
FAST: dict[str, Any] = {
    "redis_timeout": 0.3,
    "pg_timeout": 2.0,
    "connect_timeout": 1.0,
    "health_check_interval": 0.2,
    "reclaim_after": 1.0,
    "reclaim_interval": 0.5,
    "max_session_messages": 20,
    "write_behind_delay": 0.05,
    "pg_pool_max": 4,
}


def new_namespace(prefix: str = "f") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def pg_fetch(url: str, sql: str, *args: Any, timeout: float = 30) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return list(await conn.fetch(sql, *args, timeout=timeout))
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callers may sit inside a running loop
        return pool.submit(asyncio.run, run()).result()


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# -- records ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Op:
    wid: str
    kind: str  # "a" ack, "r" read, "e" error
    sid: str
    ids: list[str]
    seqs: list[int]
    t0: float
    t1: float
    error: str = ""
    typed: bool = True
    op: str = ""
    cid: str = ""  # checkpoint mode: the checkpoint an acknowledged step stored


def read_log(path: Path, wid: str) -> tuple[list[Op], dict[str, Any]]:
    ops: list[Op] = []
    meta: dict[str, Any] = {}
    if not path.exists():
        return ops, meta
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line cannot happen with one write per line, but never trust it
        k = rec["k"]
        if k in ("a", "r"):
            ops.append(Op(wid, k, rec["s"], rec["i"], [int(q) for q in rec["q"]], rec["t0"], rec["t1"],
                          cid=rec.get("c", "")))
        elif k == "e":
            ops.append(Op(wid, "e", rec["s"], [], [], rec["t0"], rec["t1"], rec["e"], rec["typed"], rec["op"]))
        else:
            meta[k] = rec
    return ops, meta


class WriterProc:
    """One writer process; its log is the parent's record of what it acknowledged."""

    def __init__(self, plan: dict[str, Any], workdir: Path) -> None:
        self.wid: str = plan["wid"]
        self.log = workdir / f"{self.wid}.jsonl"
        self.err = workdir / f"{self.wid}.stderr"
        plan = {**plan, "out": str(self.log)}
        self.plan = plan
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, WRITER, json.dumps(plan)], stdout=subprocess.DEVNULL,
                                         stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.killed = False
        self.hung = False
        self.stopping = False

    def ready(self) -> bool:
        return self.log.exists() and b'"k":"ready"' in self.log.read_bytes()

    def acked(self) -> int:
        return sum(len(o.ids) for o in read_log(self.log, self.wid)[0] if o.kind == "a")

    def kill(self) -> None:
        """SIGKILL: no flush, no atexit, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.killed = True

    def terminate(self, timeout: float = 45.0) -> None:
        if self.proc.poll() is not None:
            return
        if not self.stopping:
            self.proc.send_signal(signal.SIGTERM)
            self.stopping = True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.hung = True
            self.proc.send_signal(signal.SIGUSR2)  # the engine loop's asyncio tasks, to stderr
            time.sleep(1.0)
            self.proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack, to stderr
            time.sleep(0.5)
            self.proc.kill()
            self.proc.wait()

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.err.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# -- the verdict -----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    fault: str
    writers: int = 0
    sessions: int = 0
    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    stale_in_fault: int = 0
    stale_outside: int = 0
    stale_after_recovery: int = 0  # the fresh process's reads through the public API
    cache_mismatch: int = 0
    max_stall: float = 0.0
    typed_errors: int = 0
    other_errors: int = 0
    reads: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 25:
            self.problems.append(text)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.stale_outside
                    or self.stale_after_recovery or self.cache_mismatch or self.other_errors)

    def summary(self) -> str:
        lines = [format_table([self]), f"notes: {self.notes}"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


COLUMNS = ("fault", "acked", "lost", "dup", "out of order", "stale reads in fault/outside/after",
           "cache!=PG", "max stall s", "errors typed/other", "reads")


def format_table(rows: Iterable[Outcome]) -> str:
    body = [(o.fault, str(o.acked), str(o.lost), str(o.duplicated), str(o.out_of_order),
             f"{o.stale_in_fault}/{o.stale_outside}/{o.stale_after_recovery}", str(o.cache_mismatch),
             f"{o.max_stall:.2f}", f"{o.typed_errors}/{o.other_errors}", str(o.reads)) for o in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(COLUMNS), sep, *(line(r) for r in body)])


def _parse_element(el: bytes) -> tuple[int, str]:
    msg = decode_element(el)  # the engine's own decoder: the element format is the engine's business
    if msg.seq is None:
        raise ValueError("cached element without a seq")
    return msg.seq, msg.id


class FaultRun:
    """One fault scenario: writer processes, the fault window, and the checks after it."""

    def __init__(self, fault: str, *, pg_url: str, redis_url: str, writer_pg_url: str | None = None,
                 writer_redis_url: str | None = None, config: dict[str, Any] | None = None,
                 namespace: str | None = None, mode: str = "messages") -> None:
        self.fault = fault
        self.mode = mode
        self.namespace = namespace or new_namespace()
        self.pg_url = pg_url  # direct, for checks
        self.redis_url = redis_url
        self.writer_pg_url = writer_pg_url or pg_url  # maybe through a proxy
        self.writer_redis_url = writer_redis_url or redis_url
        self.config = {**FAST, **(config or {})}
        self.window = int(self.config["max_session_messages"])
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hm-fault-{fault}-"))
        self.writers: list[WriterProc] = []
        self.windows: list[list[float]] = []  # [fault start, recovered at] of each fault injected
        self.outcome = Outcome(fault)
        self.keys = KeyLayout(self.namespace, SHARDS)
        self._seed = 0

    # -- writers -----------------------------------------------------------------------------------------
    def own_sessions(self, wid: str, n: int) -> list[str]:
        # Some ids carry characters the key layout must escape: faults must not care.
        return [f"{wid}-s{i}" + (" {é}:%" if i % 7 == 3 else "") for i in range(n)]

    def start_writer(self, wid: str, own: list[str], *, config: dict[str, Any] | None = None,
                     **plan: Any) -> WriterProc:
        self._seed += 1
        full = {"wid": wid, "namespace": self.namespace, "database_url": self.writer_pg_url,
                "redis_url": self.writer_redis_url, "config": {**self.config, **(config or {})}, "own": own,
                "seed": f"{self.fault}-{self._seed}", "mode": self.mode, "rate": 120, "read_every": 2, "new_every": 40,
                "max_seconds": 150, **plan}
        writer = WriterProc(full, self.workdir)
        self.writers.append(writer)
        return writer

    def start_writers(self, n: int = 2, sessions: int = 150, *, cross: bool = True,
                      **plan: Any) -> list[WriterProc]:
        """`n` writers with `sessions` sessions each; each also reads the others' sessions (`cross`)."""
        owns = {f"w{i}": self.own_sessions(f"w{i}", sessions) for i in range(n)}
        started = []
        for wid, own in owns.items():
            others = [s for w, o in owns.items() if w != wid for s in o] if cross else []
            started.append(self.start_writer(wid, own, cross=others, **plan))
        self.wait_ready(started)
        return started

    def wait_ready(self, writers: list[WriterProc], timeout: float = 30) -> None:
        if not wait_until(lambda: all(w.ready() or w.proc.poll() is not None for w in writers), timeout):
            raise RuntimeError(f"writers not ready in {timeout}s: {[w.stderr_tail() for w in writers]}")
        dead = [w for w in writers if w.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"writer {dead[0].wid} died at start: {dead[0].stderr_tail()}")

    def wait_acked(self, n: int, timeout: float = 30) -> None:
        """Block until the live writers acknowledged at least `n` messages in total (the load is on)."""
        wait_until(lambda: sum(w.acked() for w in self.writers) >= n, timeout, 0.1)

    def stop_writers(self) -> None:
        for w in self.writers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
                w.stopping = True
        for w in self.writers:
            w.terminate()

    # -- the fault window --------------------------------------------------------------------------------
    @property
    def fault_start(self) -> float | None:
        return self.windows[0][0] if self.windows else None

    def fault_begins(self) -> None:
        self.windows.append([time.monotonic(), float("inf")])

    def recovered(self, grace: float = 1.0) -> None:
        """The fault is over; after `grace` (detection by every process) every read must be exact."""
        self.windows[-1][1] = time.monotonic() + grace

    def in_fault(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.windows)

    # -- the verdict -------------------------------------------------------------------------------------
    def finish(self, *, drain_timeout: float = 20.0) -> Outcome:
        self.stop_writers()
        o = self.outcome
        o.writers = len(self.writers)
        for w in self.writers:
            if w.hung:
                o.other_errors += 1
                o.problem(f"writer {w.wid} did not stop within 45s after SIGTERM: {w.stderr_tail(6000)}")
            if not w.killed and w.proc.returncode not in (0, None):
                o.other_errors += 1
                o.problem(f"writer {w.wid} exited {w.proc.returncode}: {w.stderr_tail(500)}")
        ops: list[Op] = []
        for w in self.writers:
            got, meta = read_log(w.log, w.wid)
            ops += got
            if not w.killed and "end" in meta:
                o.notes.setdefault("close_s_max", 0.0)
                o.notes["close_s_max"] = round(max(o.notes["close_s_max"], meta["end"]["close_s"]), 2)
        verifier = HybridMemory(HybridConfig(database_url=self.pg_url, redis_url=self.redis_url,
                                             namespace=self.namespace, **{**FAST, **self._verifier_config()}))
        try:
            verifier.start()
            self._drain(verifier, drain_timeout)
            if self.mode == "checkpoint":
                stored, latest = self._stored_threads(verifier, ops)
            else:
                stored = self._stored()
            self._check_acks(ops, stored)
            self._check_reads(ops, stored)
            if self.mode == "checkpoint":
                self._check_threads(stored, latest)
            else:
                # The public API first (a damaged window is dropped and reloaded when read), then what Redis
                # holds: every window the engine would serve must be PostgreSQL's tail, i.e. damage was repaired.
                self._check_api(verifier, stored)
                self._check_cache(stored)
        finally:
            verifier.close(flush_timeout=10)
        return o

    def _verifier_config(self) -> dict[str, Any]:
        keep = ("max_session_messages", "max_message_bytes")
        return {k: v for k, v in self.config.items() if k in keep}

    def _outbox_depth(self) -> int:
        r = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            pipe = r.pipeline(transaction=False)
            for key in self.keys.all_outboxes():
                pipe.xlen(key)
            return int(sum(pipe.execute()))
        finally:
            r.close()

    def _drain(self, verifier: HybridMemory, timeout: float) -> None:
        """Wait for the janitors to commit what dead writers left; then make sure (and say so)."""
        o = self.outcome
        drained = wait_until(lambda: self._outbox_depth() == 0, timeout, 0.2)
        if not drained:
            o.notes["outbox_left_after_wait"] = self._outbox_depth()
            o.notes["verifier_reclaimed"] = verifier.reclaim_orphans(0)
        verifier.flush(timeout=30)

    def _stored(self) -> dict[str, list[tuple[int, str]]]:
        rows = pg_fetch(self.pg_url, f'SELECT session_id, seq, msg_id FROM "{self.namespace}".messages')
        stored: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for sid, seq, mid in rows:
            stored[sid].append((seq, mid))
        for lst in stored.values():
            lst.sort()
        return stored

    # -- checkpoint mode --------------------------------------------------------------------------------
    @staticmethod
    def _thread_config(sid: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": sid, "checkpoint_ns": ""}}

    def _stored_threads(self, verifier: HybridMemory, ops: list[Op]
                        ) -> tuple[dict[str, list[tuple[int, str]]], dict[str, str]]:
        """Each thread's latest `messages` as PostgreSQL holds them (positions as seqs), its latest checkpoint
        id, and one `lost` per acknowledged checkpoint PostgreSQL does not hold."""
        from langchain_hybrid_memory.checkpoint import HybridSaver

        o = self.outcome
        saver = HybridSaver(verifier)
        stored: dict[str, list[tuple[int, str]]] = {}
        latest: dict[str, str] = {}
        for sid in sorted({op.sid for op in ops if op.kind == "a"}):
            tups = list(saver.list(self._thread_config(sid), limit=1))  # PostgreSQL, after the outbox drained
            if not tups:
                continue
            msgs = tups[0].checkpoint["channel_values"].get("messages", [])
            stored[sid] = [(i, m.id) for i, m in enumerate(msgs)]
            latest[sid] = tups[0].config["configurable"]["checkpoint_id"]
        held = {(r[0], r[1]) for r in pg_fetch(self.pg_url, f'SELECT thread_id, checkpoint_id FROM '
                                                           f'"{self.namespace}".checkpoints')}
        missing = [(op.sid, op.cid) for op in ops if op.kind == "a" and (op.sid, op.cid) not in held]
        o.lost += len(missing)
        for sid, cid in missing[:5]:
            o.problem(f"lost: acknowledged checkpoint {cid} of {sid!r} is not in PostgreSQL")
        o.notes["checkpoints"] = len(held)
        return stored, latest

    def _check_threads(self, stored: dict[str, list[tuple[int, str]]], latest: dict[str, str]) -> None:
        """What Redis holds as each thread's latest checkpoint, and what a fresh process reads (twice)."""
        from langchain_hybrid_memory.checkpoint import HybridSaver

        o = self.outcome
        r = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        try:
            pipe = r.pipeline(transaction=False)
            for sid in stored:
                pipe.hget(self.keys.thread(sid).checkpoints, "i\x1f")
            hot = dict(zip(stored, pipe.execute(), strict=True))
        finally:
            r.close()
        o.notes["hot_threads_compared"] = sum(1 for v in hot.values() if v is not None)
        for sid, cid in hot.items():
            if cid is not None and cid.decode() != latest[sid]:
                o.cache_mismatch += 1
                o.problem(f"Redis holds {cid.decode()} as the latest checkpoint of {sid!r}, PostgreSQL {latest[sid]}")
        fresh = HybridMemory(HybridConfig(database_url=self.pg_url, redis_url=self.redis_url,
                                          namespace=self.namespace, **FAST))
        try:
            saver = HybridSaver(fresh)
            for sid, want in stored.items():
                for attempt in ("first", "second"):
                    try:
                        tup = saver.get_tuple(self._thread_config(sid))
                    except Exception as exc:
                        o.stale_after_recovery += 1
                        o.other_errors += not isinstance(exc, HybridMemoryError)
                        o.problem(f"after recovery, {attempt} read of {sid!r} raised {type(exc).__name__}: {exc}")
                        break
                    got = [(i, m.id) for i, m in enumerate(tup.checkpoint["channel_values"]["messages"])] if tup else []
                    if got != want:
                        o.stale_after_recovery += 1
                        o.problem(f"after recovery, {attempt} read of {sid!r}: {len(got)} messages "
                                  f"{[m for _, m in got[-3:]]} vs PostgreSQL's {len(want)} {[m for _, m in want[-3:]]}")
                        break
        finally:
            fresh.close(flush_timeout=10)

    def _check_acks(self, ops: list[Op], stored: dict[str, list[tuple[int, str]]]) -> None:
        o = self.outcome
        where: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for sid, lst in stored.items():
            for seq, mid in lst:
                where[mid].append((sid, seq))
        o.duplicated = sum(1 for v in where.values() if len(v) > 1)
        for mid, v in where.items():
            if len(v) > 1:
                o.problem(f"duplicated: {mid} stored {v}")
        acks = [op for op in ops if op.kind == "a"]
        acked: dict[str, tuple[str, int]] = {}
        for a in acks:
            for mid, seq in zip(a.ids, a.seqs, strict=True):
                if mid in acked and acked[mid] != (a.sid, seq):
                    o.out_of_order += 1
                    o.problem(f"acknowledged twice with different places: {mid} {acked[mid]} / {(a.sid, seq)}")
                acked[mid] = (a.sid, seq)
        o.acked = len(acked)
        o.sessions = len({a.sid for a in acks})
        stored_seq: dict[tuple[str, str], int] = {(sid, mid): seq for mid, v in where.items() for sid, seq in v}
        for mid, (sid, seq) in acked.items():
            got = stored_seq.get((sid, mid))
            if got is None:
                o.lost += 1
                o.problem(f"lost: {mid} in {sid!r} (acknowledged seq {seq}); stored as {where.get(mid)}")
            elif got != seq:
                o.out_of_order += 1
                o.problem(f"acknowledged seq {seq} of {mid} is stored as {got}")
        # One order per session, consistent with real time: an add that finished before another began is first.
        by_session: dict[str, list[Op]] = defaultdict(list)
        for a in acks:
            by_session[a.sid].append(a)
        for sid, calls in by_session.items():
            seqs = [[stored_seq.get((sid, m)) for m in a.ids] for a in calls]
            for a, qs in zip(calls, seqs, strict=True):
                known = [q for q in qs if q is not None]
                if known != sorted(set(known)):
                    o.out_of_order += 1
                    o.problem(f"one call's messages out of call order in {sid!r}: {a.ids} -> {qs}")
            ends = sorted((a.t1, max((q for q in qs if q is not None), default=-1))
                          for a, qs in zip(calls, seqs, strict=True))
            t1s = [e[0] for e in ends]
            prefix: list[int] = []
            for _, last in ends:
                prefix.append(max(last, prefix[-1]) if prefix else last)
            for a, qs in zip(calls, seqs, strict=True):
                known = [q for q in qs if q is not None]
                k = bisect.bisect_left(t1s, a.t0)
                if known and k and prefix[k - 1] >= min(known):
                    o.out_of_order += 1
                    o.problem(f"{sid!r}: {a.ids} began after an add with seq {prefix[k - 1]} had finished, "
                              f"yet is ordered before it ({min(known)})")
        o.max_stall = max((op.t1 - op.t0 for op in ops), default=0.0)
        for op in ops:
            if op.kind == "e":
                if op.typed:
                    o.typed_errors += 1
                else:
                    o.other_errors += 1
                    o.problem(f"{op.wid} {op.op} {op.sid!r} raised an untyped error: {op.error}")
        errs = Counter(op.error.split(":")[0] for op in ops if op.kind == "e")
        if errs:
            o.notes["errors"] = dict(errs)

    def _check_reads(self, ops: list[Op], stored: dict[str, list[tuple[int, str]]]) -> None:
        o = self.outcome
        pos: dict[str, dict[str, int]] = {sid: {m: i for i, (_, m) in enumerate(lst)} for sid, lst in stored.items()}
        seq_of: dict[str, dict[str, int]] = {sid: {m: q for q, m in lst} for sid, lst in stored.items()}
        acks: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for a in ops:
            if a.kind == "a":
                p = [pos.get(a.sid, {}).get(m) for m in a.ids]
                known = [x for x in p if x is not None]
                if known:
                    acks[a.sid].append((a.t1, max(known)))
        prefix: dict[str, tuple[list[float], list[int]]] = {}
        for sid, done in acks.items():
            done.sort()
            best: list[int] = []
            for _, place in done:
                best.append(max(place, best[-1]) if best else place)
            prefix[sid] = ([t for t, _ in done], best)
        for r in ops:
            if r.kind != "r":
                continue
            o.reads += 1
            why = self._read_problem(r, pos.get(r.sid, {}), seq_of.get(r.sid, {}), prefix.get(r.sid))
            if why is None:
                continue
            in_fault = self.in_fault(r.t0)
            if in_fault:
                o.stale_in_fault += 1
            else:
                o.stale_outside += 1
            phase = "in fault" if in_fault else "outside the fault"
            o.problem(f"stale read ({phase}, t={self._rel(r.t0)}) by {r.wid} of {r.sid!r}: {why}")

    def _rel(self, t: float) -> str:
        base = self.fault_start
        return f"{t - base:+.2f}s" if base is not None else f"{t:.2f}"

    def _read_problem(self, r: Op, pos: dict[str, int], seq_of: dict[str, int],
                      prefix: tuple[list[float], list[int]] | None) -> str | None:
        ps = [pos.get(m) for m in r.ids]
        if any(p is None for p in ps):
            missing = [m for m, p in zip(r.ids, ps, strict=True) if p is None]
            return f"returned ids that PostgreSQL does not hold: {missing[:3]}"
        places = [p for p in ps if p is not None]
        if any(seq_of[m] != q for m, q in zip(r.ids, r.seqs, strict=True)):
            return "returned seqs that differ from PostgreSQL's"
        if places and places != list(range(places[0], places[0] + len(places))):
            return f"not a contiguous run of the session's order: positions {places[:5]}..."
        if places and len(places) < self.window and places[0] != 0:
            return f"window cut short: {len(places)} messages starting at position {places[0]}"
        if prefix is not None:
            t1s, best = prefix
            k = bisect.bisect_left(t1s, r.t0)
            if k:
                newest = best[k - 1]
                if not places or places[-1] < newest:
                    return (f"missed an acknowledged message: newest seen position "
                            f"{places[-1] if places else None}, acknowledged before the read: {newest}")
        return None

    def _check_cache(self, stored: dict[str, list[tuple[int, str]]]) -> None:
        o = self.outcome
        sids = sorted(stored)
        r = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        try:
            pipe = r.pipeline(transaction=False)
            for sid in sids:
                k = self.keys.session(sid)
                pipe.lrange(k.window, 0, -1)
                pipe.hgetall(k.meta)
                pipe.exists(k.ids)
            out = pipe.execute()
        finally:
            r.close()
        cached = 0
        for i, sid in enumerate(sids):
            elements, meta, has_ids = out[3 * i], out[3 * i + 1], out[3 * i + 2]
            if not meta or b"partial" in meta:
                continue  # not served from the cache
            if int(meta.get(b"n", -1)) != len(elements) or (elements and not has_ids):
                continue  # damaged by eviction: the engine drops and reloads such a window, never serves it
            cached += 1
            try:
                got = [_parse_element(el) for el in elements]
            except (ValueError, KeyError, TypeError) as exc:
                o.cache_mismatch += 1
                o.problem(f"cache of {sid!r} holds an undecodable element ({type(exc).__name__}: {exc}; "
                          f"{[e[:40] for e in elements][:2]})")
                continue
            want = stored[sid][-self.window:]
            if got != want:
                o.cache_mismatch += 1
                o.problem(f"cache of {sid!r} is not PostgreSQL's tail: {len(got)} cached "
                          f"{[m for _, m in got[-3:]]} vs {len(want)} {[m for _, m in want[-3:]]}")
        o.notes["cached_windows_compared"] = cached

    def _check_api(self, verifier: HybridMemory, stored: dict[str, list[tuple[int, str]]]) -> None:
        o = self.outcome
        for sid in sorted(stored):
            want = stored[sid][-self.window:]
            for attempt in ("first", "second"):
                try:
                    got = [(m.seq, m.id) for m in verifier.get_recent_messages(sid)]
                except HybridMemoryError as exc:
                    o.stale_after_recovery += 1
                    o.problem(f"after recovery, {attempt} read of {sid!r} failed: {type(exc).__name__}: {exc}")
                    break
                except Exception as exc:
                    o.other_errors += 1
                    o.stale_after_recovery += 1
                    o.problem(f"after recovery, {attempt} read of {sid!r} raised {type(exc).__name__}: {exc}")
                    break
                if got != want:
                    o.stale_after_recovery += 1
                    o.problem(f"after recovery, {attempt} read of {sid!r} is not PostgreSQL's tail: "
                              f"{len(got)} {[m for _, m in got[-3:]]} vs {len(want)} {[m for _, m in want[-3:]]}")
                    break

    def cleanup(self) -> None:
        for w in self.writers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        if os.environ.get("FAULT_KEEP_LOGS"):
            print(f"fault logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
