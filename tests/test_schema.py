"""PostgreSQL schema: migrations are versioned and idempotent (nothing left to apply after the first call, the
primary key is (session_id, seq)), and hash-partitioned messages spread sessions while a session's read scans
one partition."""

from __future__ import annotations

import re

from langchain_hybrid_memory import Message
from langchain_hybrid_memory.store import migrations

from conftest import pg_fetch


def test_migrations_are_versioned_and_idempotent(make_memory, namespace):
    memory = make_memory()
    memory.get_recent_messages("s")  # first call migrates
    assert memory.migrate() == []  # nothing left to apply
    versions = [r[0] for r in pg_fetch(f'SELECT version FROM "{namespace}".schema_migrations ORDER BY 1')]
    assert versions == [v for v, _, _ in migrations()] and versions[0] == 1
    pk = pg_fetch("SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_namespace n ON "
                  "n.oid = c.connamespace WHERE n.nspname = $1 AND c.conrelid::regclass::text LIKE '%messages' "
                  "AND c.contype = 'p'", namespace)
    assert pk[0][0] == "PRIMARY KEY (session_id, seq)"


def test_hash_partitioned_messages(make_memory, namespace):
    memory = make_memory(pg_partitions=4)
    for i in range(40):
        memory.add_messages(f"s{i}", [Message("human", f"m{i}")])
    memory.flush()
    parts = pg_fetch("SELECT c.relname, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) FROM pg_class c"
                     " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_partitioned_table p ON p.partrelid = c.oid"
                     " WHERE n.nspname = $1", namespace)
    assert [(r[0], r[1]) for r in parts] == [("messages", 4)]
    counts = [pg_fetch(f'SELECT count(*) FROM "{namespace}".messages_p{i}')[0][0] for i in range(4)]
    assert sum(counts) == 40 and all(c > 0 for c in counts)
    plan = "\n".join(r[0] for r in pg_fetch(
        f"EXPLAIN SELECT seq FROM \"{namespace}\".messages WHERE session_id = 's7' ORDER BY seq"))
    assert len(set(re.findall(r"messages_p\d+", plan))) == 1  # one partition scanned
    memory.invalidate_session("s7")
    assert [m.content for m in memory.get_recent_messages("s7")] == ["m7"]
