"""The checkpoint tables' SQL (migration 0004), on the engine's PostgreSQL pool. One round trip per call.

Also the records the write-behind outbox carries for checkpoints: a put (`c`) or a task's writes (`w`), packed
as length-prefixed parts so that any process (its janitor included) can commit them without LangGraph.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import orjson
import ormsgpack

from ..errors import InvalidInputError
from ..store import THREAD_MARK, PostgresStore

Blob = tuple[str, str, str, bytes | None]  # channel, version, type, bytes
Write = tuple[int, str, str, bytes]  # idx, channel, type, bytes

# A checkpoint with everything it references: its writes (in LangGraph's order) and the blobs of its channel
# versions, each aggregated once (ids and bytes in the same order).
_SELECT = """
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type, c.checkpoint, c.metadata_type,
       c.metadata_blob, w.writes, w.write_blobs, b.blobs, b.blob_bytes
  FROM checkpoints c
  CROSS JOIN LATERAL (
      SELECT coalesce(array_agg(ARRAY[w.task_id, w.channel, w.type, w.task_path, w.idx::text]
                                ORDER BY w.task_path COLLATE "C", w.task_id COLLATE "C", w.idx), '{}') AS writes,
             coalesce(array_agg(w.blob ORDER BY w.task_path COLLATE "C", w.task_id COLLATE "C", w.idx), '{}')
                 AS write_blobs
        FROM checkpoint_writes w
       WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id
  ) w
  CROSS JOIN LATERAL (
      SELECT coalesce(array_agg(ARRAY[b.channel, b.version, b.type] ORDER BY b.channel), '{}') AS blobs,
             coalesce(array_agg(b.blob ORDER BY b.channel), '{}') AS blob_bytes
        FROM jsonb_each_text(c.channel_versions) AS cv(channel, version)
        JOIN checkpoint_blobs b ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
                               AND b.channel = cv.channel AND b.version = cv.version
  ) b
"""


_JSONB = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def jsonb(what: str, value: Any) -> str:
    """`value` as text PostgreSQL's jsonb takes, for the metadata column and its filters alike: what jsonb cannot
    hold is mapped the same way on both sides (NaN and infinities to null, NUL to U+FFFD), so the column stays a
    prefilter (the exact comparison is made on the metadata itself); anything else as `json.dumps(default=str)`
    writes it. What JSON cannot carry (a lone surrogate) raises InvalidInputError naming `what`."""
    try:
        out = orjson.dumps(value, default=str, option=_JSONB)
    except TypeError as exc:
        raise InvalidInputError(f"{what} cannot be written as JSON ({exc})") from None
    if b"\\u0000" in out:
        out = out.replace(b"\\u0000", b"\\ufffd")
    return out.decode("utf-8")


def _match_metadata(metadata: dict[str, Any] | None, where: list[str], args: list[Any]) -> None:
    """SQL conditions (and their arguments) for a metadata filter: each key's value equal, a missing key as None,
    as InMemorySaver's. The caller checks the metadata itself too: the jsonb column maps what it cannot hold."""
    for key, value in (metadata or {}).items():
        if _bool_or_bit(value):
            continue  # Python's True == 1 and False == 0, not jsonb's: left to the check on the metadata
        # The key as the column holds it (jsonb's mapping: NUL as U+FFFD), taken out of a JSON string.
        args += [jsonb("the filter", str(key)), jsonb("the filter", value)]
        where.append(f"COALESCE(c.metadata -> (${len(args) - 1}::jsonb #>> '{{}}'), 'null') = ${len(args)}::jsonb")


def _bool_or_bit(value: Any) -> bool:
    """Whether a filter value holds a bool, 0 or 1 (at any depth)."""
    if isinstance(value, dict):
        return any(_bool_or_bit(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_bool_or_bit(v) for v in value)
    return isinstance(value, (bool, int, float)) and value in (0, 1)


_NONE = 0xFFFFFFFF
_LEN = struct.Struct(">I")


def pack(parts: Sequence[bytes | str | None]) -> bytes:
    """Parts (bytes, str or None) as one bytes value: a MessagePack array, packed in C (the step's records are
    packed on every put and writes)."""
    return ormsgpack.packb(parts)


def unpack(data: bytes) -> list[bytes | str | None]:
    """`pack`'s parts back (a str part may come back as bytes: see `text`). Also reads the format records had
    before (length-prefixed parts, first byte 0: no first part is 16 MiB long), which a Redis upgraded in place
    may still hold in its outbox or hot state. Raises ValueError on a damaged record."""
    if data[:1] != b"\x00":
        try:
            parts = ormsgpack.unpackb(data) if data else []
        except ormsgpack.MsgpackDecodeError:
            raise ValueError("damaged record") from None
        if not isinstance(parts, list):
            raise ValueError("damaged record")
        return parts
    out: list[bytes | str | None] = []
    i, end = 0, len(data)
    while i < end:
        if i + 4 > end:
            raise ValueError("truncated record")
        (n,) = _LEN.unpack_from(data, i)
        i += 4
        if n == _NONE:
            out.append(None)
            continue
        if i + n > end:
            raise ValueError("truncated record")
        out.append(data[i:i + n])
        i += n
    return out


def text(part: bytes | str | None) -> str | None:
    """A str part of an unpacked record (the older format gives every part as bytes). Raises ValueError if it
    is neither (a damaged record)."""
    if isinstance(part, bytes):
        return part.decode("utf-8")
    if part is None or isinstance(part, str):
        return part
    raise ValueError("damaged record")


def _blob(part: bytes | str | None) -> bytes | None:
    if part is not None and not isinstance(part, bytes):
        raise ValueError("damaged record")
    return part


def put_record(thread_id: str, ns: str, checkpoint_id: str, parent_id: str | None, run_id: str | None,
               checkpoint: tuple[str, bytes], versions_json: str, metadata: tuple[str, bytes], metadata_json: str,
               blobs: Sequence[Blob]) -> bytes:
    parts: list[bytes | str | None] = ["c", thread_id, ns, checkpoint_id, parent_id, run_id, checkpoint[0],
                                       checkpoint[1], versions_json, metadata[0], metadata[1], metadata_json]
    for blob in blobs:
        parts.extend(blob)
    return pack(parts)


def writes_record(thread_id: str, ns: str, checkpoint_id: str, task_id: str, task_path: str,
                  writes: Sequence[Write]) -> bytes:
    parts: list[bytes | str | None] = ["w", thread_id, ns, checkpoint_id, task_id, task_path]
    for idx, channel, kind, data in writes:
        parts.extend((str(idx), channel, kind, data))
    return pack(parts)


# Records of a deleted thread up to its newest checkpoint (a tombstone's `upto`) are left out: another process
# may commit what it acknowledged before the delete only now. Each table's rows go in key order: two processes
# committing some of the same records at once (one's write-behind batch, the other's settling of a thread before
# a read) then wait on each other's rows in one order, never in a cycle (a deadlock).
_LIVE = """NOT EXISTS (SELECT 1 FROM thread_tombstones t
                   WHERE t.thread_id = encode(sha256(convert_to(u.thread_id, 'UTF8')), 'hex')
                     AND u.checkpoint_id COLLATE "C" <= t.upto)
       AND NOT EXISTS (SELECT 1 FROM checkpoint_tombstones k
                        WHERE k.thread_id = encode(sha256(convert_to(u.thread_id, 'UTF8')), 'hex')
                          AND k.checkpoint_ns = u.checkpoint_ns AND k.checkpoint_id = u.checkpoint_id)"""

# Tombstones for the checkpoints a statement deleted one by one (its `gone` CTE): a record of one that another
# process commits later stays out (_LIVE).
_BURY = """bury AS (INSERT INTO checkpoint_tombstones (thread_id, checkpoint_ns, checkpoint_id)
    SELECT encode(sha256(convert_to(thread_id, 'UTF8')), 'hex'), checkpoint_ns, checkpoint_id FROM gone
    ON CONFLICT DO NOTHING)"""

_COMMIT = """
WITH b AS (
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT thread_id, checkpoint_ns, channel, version, type, blob
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[])
        AS u(thread_id, checkpoint_ns, channel, version, type, blob, checkpoint_id)
     WHERE """ + _LIVE + """
     ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING
), w AS (
    INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type,
                                   blob)
    SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int[], $14::text[],
                         $15::text[], $16::bytea[])
        AS u(thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
     WHERE """ + _LIVE + """
     ORDER BY 1, 2, 3, 4, 6
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
        channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob, task_path = EXCLUDED.task_path
        WHERE checkpoint_writes.idx < 0
)
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, type, checkpoint,
                         channel_versions, metadata_type, metadata_blob, metadata)
SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::bytea[],
                     $24::jsonb[], $25::text[], $26::bytea[], $27::jsonb[])
    AS u(thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, type, checkpoint, channel_versions,
         metadata_type, metadata_blob, metadata)
 WHERE """ + _LIVE + """
 ORDER BY 1, 2, 3
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
    parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, run_id = EXCLUDED.run_id, type = EXCLUDED.type,
    checkpoint = EXCLUDED.checkpoint, channel_versions = EXCLUDED.channel_versions,
    metadata_type = EXCLUDED.metadata_type, metadata_blob = EXCLUDED.metadata_blob, metadata = EXCLUDED.metadata
"""


async def commit_records(store: PostgresStore, records: Sequence[bytes], *, around_redis: bool = False) -> None:
    """Commit outbox records (in their order) in one statement; idempotent, so a replay is harmless. Within the
    batch a re-put checkpoint keeps its last version, a regular write its first, a special write its last (as
    the single-row statements do one after another). `around_redis`: written to PostgreSQL directly, so their
    threads are marked in cache_dirty in the same transaction (their hot state in Redis is stale). Raises
    ValueError on a damaged record."""
    blobs: list[tuple[Any, ...]] = []  # and the checkpoint that brought each one
    writes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    puts: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for record in records:
        p = unpack(record)
        kind = text(p[0]) if p else None
        if kind == "c" and len(p) >= 12 and (len(p) - 12) % 4 == 0:
            thread, ns = text(p[1]), text(p[2])
            puts[(thread, ns, text(p[3]))] = (thread, ns, text(p[3]), text(p[4]), text(p[5]), text(p[6]),
                                               _blob(p[7]), text(p[8]), text(p[9]), _blob(p[10]), text(p[11]))
            for i in range(12, len(p), 4):
                blobs.append((thread, ns, text(p[i]), text(p[i + 1]), text(p[i + 2]), _blob(p[i + 3]),
                              text(p[3])))
        elif kind == "w" and len(p) >= 6 and (len(p) - 6) % 4 == 0:
            head = (text(p[1]), text(p[2]), text(p[3]), text(p[4]), text(p[5]))
            for i in range(6, len(p), 4):
                raw = p[i]
                idx = int(raw) if raw is not None else 0
                key = (head[0], head[1], head[2], head[3], idx)
                if idx >= 0 and key in writes:
                    continue
                writes[key] = (*head, idx, text(p[i + 1]), text(p[i + 2]), _blob(p[i + 3]))
        else:
            raise ValueError("not a checkpoint record")
    if not (blobs or writes or puts):
        return
    cols: list[list[Any]] = []
    for rows, width in ((blobs, 7), (list(writes.values()), 9), (list(puts.values()), 11)):
        cols.extend([r[i] for r in rows] for i in range(width))
    threads = {r[0] for r in blobs} | {k[0] for k in writes} | {k[0] for k in puts}
    locked = sorted(t for t in threads if t is not None)
    await store.run_locked(locked, False, "execute", _COMMIT, *cols,
                           marks=[THREAD_MARK + t for t in locked] if around_redis else ())


# DeltaChannel's history in one round trip: walk the parent chain from the target's parent while some channel
# has not found a stored value yet (`seen`: channels seeded at a nearer ancestor); per ancestor, its writes to
# the channels still open and the values it stores of them.
_STORED = """EXISTS (SELECT 1 FROM checkpoint_blobs b WHERE b.thread_id = $1 AND b.checkpoint_ns = $2
                    AND b.channel = ch AND b.version = {row}.channel_versions ->> ch AND b.type <> 'empty')"""
_DELTA_HISTORY = """
WITH RECURSIVE walk AS (
    SELECT p.checkpoint_id, p.parent_checkpoint_id, p.channel_versions, 1 AS depth, '{}'::text[] AS seen
      FROM checkpoints t
      JOIN checkpoints p ON p.thread_id = t.thread_id AND p.checkpoint_ns = t.checkpoint_ns
                        AND p.checkpoint_id = t.parent_checkpoint_id
     WHERE t.thread_id = $1 AND t.checkpoint_ns = $2 AND t.checkpoint_id = $3
  UNION ALL
    SELECT p.checkpoint_id, p.parent_checkpoint_id, p.channel_versions, w.depth + 1, w.seen || f.found
      FROM walk w
     CROSS JOIN LATERAL (SELECT coalesce(array_agg(ch), '{}') AS found FROM unnest($4::text[]) AS ch
                          WHERE ch <> ALL (w.seen) AND """ + _STORED.format(row="w") + """) f
      JOIN checkpoints p ON p.thread_id = $1 AND p.checkpoint_ns = $2 AND p.checkpoint_id = w.parent_checkpoint_id
     WHERE cardinality(w.seen || f.found) < cardinality($4::text[])
)
SELECT w.depth, w.checkpoint_id, wr.writes, wr.write_blobs, s.blobs, s.blob_bytes
  FROM walk w
 CROSS JOIN LATERAL (
     SELECT coalesce(array_agg(ARRAY[x.task_id, x.channel, x.type]
                               ORDER BY x.task_path COLLATE "C", x.task_id COLLATE "C", x.idx), '{}') AS writes,
            coalesce(array_agg(x.blob ORDER BY x.task_path COLLATE "C", x.task_id COLLATE "C", x.idx), '{}')
                AS write_blobs
       FROM checkpoint_writes x
      WHERE x.thread_id = $1 AND x.checkpoint_ns = $2 AND x.checkpoint_id = w.checkpoint_id
        AND x.channel = ANY ($4::text[]) AND x.channel <> ALL (w.seen)
 ) wr
 CROSS JOIN LATERAL (
     SELECT coalesce(array_agg(ARRAY[b.channel, b.version, b.type] ORDER BY b.channel), '{}') AS blobs,
            coalesce(array_agg(b.blob ORDER BY b.channel), '{}') AS blob_bytes
       FROM unnest($4::text[]) AS ch
       JOIN checkpoint_blobs b ON b.thread_id = $1 AND b.checkpoint_ns = $2 AND b.channel = ch
                              AND b.version = w.channel_versions ->> ch AND b.type <> 'empty'
      WHERE ch <> ALL (w.seen)
 ) s
 ORDER BY w.depth
"""


class CheckpointStore:
    """SQL of the checkpoint tables, run through the engine's store (its pool, timeouts and errors)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def get(self, thread_id: str, ns: str, checkpoint_id: str | None) -> Any:
        if checkpoint_id:
            return await self.store._run(
                "fetchrow", _SELECT + " WHERE c.thread_id = $1 AND c.checkpoint_ns = $2 AND c.checkpoint_id = $3",
                thread_id, ns, checkpoint_id)
        return await self.store._run(
            "fetchrow", _SELECT + " WHERE c.thread_id = $1 AND c.checkpoint_ns = $2 ORDER BY c.checkpoint_id DESC"
            " LIMIT 1", thread_id, ns)

    async def list_checkpoints(self, thread_id: str | None, ns: str | None, checkpoint_id: str | None,
                   metadata: dict[str, Any] | None, before: str | None, limit: int | None) -> list[Any]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("c.thread_id", thread_id), ("c.checkpoint_ns", ns), ("c.checkpoint_id", checkpoint_id)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        _match_metadata(metadata, where, args)
        if before is not None:
            args.append(before)
            where.append(f"c.checkpoint_id < ${len(args)}")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY c.thread_id, c.checkpoint_ns, c.checkpoint_id DESC"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return list(await self.store._run("fetch", sql, *args))

    async def list_threads(self, metadata: dict[str, Any] | None, limit: int | None) -> list[Any]:
        """Per thread with a checkpoint matching `metadata`: its newest such checkpoint's id and metadata, the
        most recent first."""
        where: list[str] = []
        args: list[Any] = []
        _match_metadata(metadata, where, args)
        sql = ("SELECT * FROM (SELECT DISTINCT ON (c.thread_id) c.thread_id, c.checkpoint_id, c.metadata_type,"
               " c.metadata_blob FROM checkpoints c" + (" WHERE " + " AND ".join(where) if where else "") +
               " ORDER BY c.thread_id, c.checkpoint_id DESC) t ORDER BY t.checkpoint_id DESC, t.thread_id")
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return list(await self.store._run("fetch", sql, *args))

    async def channel_blobs(self, thread_id: str, ns: str, channel: str, upto: str) -> list[Any]:
        """Every stored version of one channel up to `upto` (a delta chain is among them)."""
        return list(await self.store._run(
            "fetch", "SELECT version, type, blob FROM checkpoint_blobs WHERE thread_id = $1 AND checkpoint_ns = $2"
            " AND channel = $3 AND version <= $4", thread_id, ns, channel, upto))

    async def delta_history(self, thread_id: str, ns: str, checkpoint_id: str, channels: Sequence[str]
                            ) -> list[Any]:
        """The ancestors of a checkpoint, nearest first, down to where every channel found a stored value:
        each with the channels still unseeded before it, its writes to those (in `writes_sort_key` order)
        and its stored values of them (`blobs` / `blob_bytes`, as `_SELECT` gives them)."""
        return list(await self.store._run("fetch", _DELTA_HISTORY, thread_id, ns, checkpoint_id, list(channels)))

    async def delete_threads(self, thread_ids: Sequence[str]) -> None:
        await drop_threads(self.store, thread_ids)

    async def delete_runs(self, run_ids: Sequence[str]) -> list[str]:
        """Delete the runs' checkpoints and writes, leaving each a tombstone; returns the threads they were in."""
        # Blobs stay: a later checkpoint's delta may be built on them (they go with the thread).
        rows = await self.store._run(
            "fetch", "WITH gone AS (DELETE FROM checkpoints WHERE run_id = ANY($1)"
            " RETURNING thread_id, checkpoint_ns, checkpoint_id),"
            " w AS (DELETE FROM checkpoint_writes w USING gone g WHERE w.thread_id = g.thread_id"
            " AND w.checkpoint_ns = g.checkpoint_ns AND w.checkpoint_id = g.checkpoint_id),"
            " " + _BURY + " SELECT DISTINCT thread_id FROM gone", list(run_ids))
        return [r[0] for r in rows]

    async def copy_thread(self, source: str, target: str) -> None:
        """Copy every row of `source` to `target`, which is created anew: a tombstone of an earlier `target`
        would leave out later writes to the copied checkpoints."""
        await self.store.run_locked(
            [target], True, "execute",
            "WITH a AS (INSERT INTO checkpoint_blobs SELECT $2, checkpoint_ns, channel, version, type, blob"
            " FROM checkpoint_blobs WHERE thread_id = $1 ON CONFLICT DO NOTHING),"
            " b AS (INSERT INTO checkpoint_writes SELECT $2, checkpoint_ns, checkpoint_id, task_id, idx, channel,"
            " type, blob, task_path FROM checkpoint_writes WHERE thread_id = $1 ON CONFLICT DO NOTHING),"
            " c AS (DELETE FROM thread_tombstones WHERE thread_id = encode(sha256(convert_to($2, 'UTF8')), 'hex')),"
            " k AS (DELETE FROM checkpoint_tombstones"
            " WHERE thread_id = encode(sha256(convert_to($2, 'UTF8')), 'hex'))"
            " INSERT INTO checkpoints SELECT $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, type,"
            " checkpoint, channel_versions, metadata_type, metadata_blob, metadata, created_at"
            " FROM checkpoints WHERE thread_id = $1 ON CONFLICT DO NOTHING", source, target)

    async def keep_latest(self, thread_id: str, ns: str, checkpoint_ids: Sequence[str],
                          keep: Sequence[tuple[str, str]], whole: Sequence[Blob]) -> None:
        """Drop every checkpoint of (thread, ns) older than the newest of `checkpoint_ids` but those, and every
        blob but those they reference (`keep`: channel, version); `whole` rewrites their delta-encoded blobs as
        whole values first. A checkpoint committed since the caller read the latest stays."""
        await self.store._run(
            "execute",
            "WITH w AS (UPDATE checkpoint_blobs b SET type = u.t, blob = u.x"
            " FROM unnest($4::text[], $5::text[], $6::text[], $7::bytea[]) AS u(c, v, t, x)"
            " WHERE b.thread_id = $1 AND b.checkpoint_ns = $2 AND b.channel = u.c AND b.version = u.v),"
            " gone AS (DELETE FROM checkpoints WHERE thread_id = $1 AND checkpoint_ns = $2"
            " AND checkpoint_id <> ALL ($3::text[]) AND checkpoint_id COLLATE \"C\" < $10"
            " RETURNING thread_id, checkpoint_ns, checkpoint_id),"
            " d AS (DELETE FROM checkpoint_writes WHERE thread_id = $1 AND checkpoint_ns = $2"
            " AND checkpoint_id <> ALL ($3::text[]) AND checkpoint_id COLLATE \"C\" < $10),"
            " " + _BURY +
            " DELETE FROM checkpoint_blobs b WHERE b.thread_id = $1 AND b.checkpoint_ns = $2"
            " AND (b.channel, b.version) NOT IN (SELECT * FROM unnest($8::text[], $9::text[]))"
            " AND NOT EXISTS (SELECT 1 FROM checkpoints n WHERE n.thread_id = $1 AND n.checkpoint_ns = $2"
            " AND n.checkpoint_id COLLATE \"C\" > $10 AND n.channel_versions ->> b.channel = b.version)",
            thread_id, ns, list(checkpoint_ids), [b[0] for b in whole], [b[1] for b in whole], [b[2] for b in whole],
            [b[3] for b in whole], [k[0] for k in keep], [k[1] for k in keep], max(checkpoint_ids))

    async def namespaces(self, thread_id: str) -> list[tuple[str, str]]:
        """(namespace, latest checkpoint id) of each namespace of a thread."""
        rows = await self.store._run(
            "fetch", "SELECT checkpoint_ns, max(checkpoint_id) FROM checkpoints WHERE thread_id = $1"
            " GROUP BY checkpoint_ns", thread_id)
        return [(r[0], r[1]) for r in rows]


# Erase threads and leave each a tombstone at its newest checkpoint id (the caller committed what waited first).
_DROP_THREADS = """
WITH x AS (
    SELECT thread_id, checkpoint_id FROM checkpoints WHERE thread_id = ANY($1::text[])
    UNION ALL SELECT thread_id, checkpoint_id FROM checkpoint_writes WHERE thread_id = ANY($1::text[])
), tomb AS (
    INSERT INTO thread_tombstones AS t (thread_id, upto)
    SELECT encode(sha256(convert_to(thread_id, 'UTF8')), 'hex'), max(checkpoint_id COLLATE "C") FROM x
     GROUP BY thread_id
    ON CONFLICT (thread_id) DO UPDATE SET upto = GREATEST(t.upto, EXCLUDED.upto), deleted_at = now()
), a AS (DELETE FROM checkpoint_writes WHERE thread_id = ANY($1::text[])),
   b AS (DELETE FROM checkpoint_blobs WHERE thread_id = ANY($1::text[]))
DELETE FROM checkpoints WHERE thread_id = ANY($1::text[])
"""


async def drop_threads(store: PostgresStore, thread_ids: Sequence[str]) -> list[str]:
    """Erase threads (tombstoned, so that late records of theirs stay out); returns `thread_ids`."""
    ids = sorted(set(thread_ids))
    if ids:
        await store.run_locked(ids, True, "execute", _DROP_THREADS, ids)
    return ids


async def delete_user_threads(store: PostgresStore, user_id: str) -> list[str]:
    """Erase every checkpoint thread whose metadata names `user_id`; returns their ids."""
    rows = await store._run("fetch", "SELECT DISTINCT thread_id FROM checkpoints WHERE metadata ->> 'user_id' = $1",
                            user_id)
    return await drop_threads(store, [r[0] for r in rows])


async def purge_idle_threads(store: PostgresStore, older_than: float) -> list[str]:
    """Retention: erase checkpoint threads whose newest checkpoint is older than `older_than` seconds."""
    rows = await store._run("fetch", "SELECT thread_id FROM checkpoints GROUP BY thread_id"
                                     " HAVING max(created_at) < now() - make_interval(secs => $1)", older_than)
    return await drop_threads(store, [r[0] for r in rows])
