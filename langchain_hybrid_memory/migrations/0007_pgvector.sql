-- Recall's vectors in pgvector, where the server has it (pgvector.py): a `vec` column beside the plain one, which
-- per-model HNSW indexes cover. Without pgvector, or without the right to create it, this does nothing and the
-- vectors stay in the plain column, scored exactly. Idempotent: `migrate()` applies it again while the extension
-- is available and the column missing (pgvector installed later).
DO $$
DECLARE
    ext_schema name;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        RETURN;
    END IF;
    BEGIN
        -- In `public`, not the namespace: one extension serves every namespace of the database, and dropping a
        -- namespace (DROP SCHEMA ... CASCADE) must not take it, and other namespaces' columns, with it.
        CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;
    EXCEPTION WHEN OTHERS THEN  -- not a superuser (pgvector is not a trusted extension), no `public`, ...
        RAISE NOTICE 'pgvector not installed: %', SQLERRM;
    END;
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector';
    IF ext_schema IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        -- No fixed dimensions: models differ. The indexer copies the plain column's vectors into it, those an
        -- HNSW index can hold (up to 2,000 dimensions); the ones it has yet to copy are found by the index below.
        EXECUTE format('ALTER TABLE message_vectors ADD COLUMN IF NOT EXISTS vec %I.vector', ext_schema);
        CREATE INDEX IF NOT EXISTS message_vectors_without_vec ON message_vectors (session_id, seq)
            WHERE vec IS NULL AND octet_length(embedding) BETWEEN 4 AND 8000;
    EXCEPTION WHEN insufficient_privilege THEN  -- a role that may use the tables but not alter them
        RAISE NOTICE 'pgvector column not added: %', SQLERRM;
    END;
END
$$;
