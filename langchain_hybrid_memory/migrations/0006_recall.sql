-- Recall: a full-text index over message text, built in the background from committed messages (never on the
-- write path). Each row's tsvector also holds one lexeme naming its session ('s:' || md5(session id)), so a
-- search within a session or a user's sessions is one GIN lookup ANDed with the scope.
CREATE TABLE IF NOT EXISTS message_search (
    session_id text   NOT NULL,
    seq        bigint NOT NULL,
    tsv        tsvector NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX IF NOT EXISTS message_search_tsv ON message_search USING gin (tsv);

-- The lowest seq committed since the session was last indexed (NULL: nothing waits). Every commit path sets
-- it in the same transaction as the messages, so the indexer never misses a committed message.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS unindexed_from bigint;
CREATE INDEX IF NOT EXISTS sessions_unindexed ON sessions (session_id) WHERE unindexed_from IS NOT NULL;
-- Sessions written before this migration: index everything they hold.
UPDATE sessions SET unindexed_from = -9223372036854775808
 WHERE EXISTS (SELECT 1 FROM messages m WHERE m.session_id = sessions.session_id);

-- Vectors, when a process has an embedder: float32, normalized, of one model (vectors of different models are
-- never compared), in a table of their own (inserted once, never updated: the tsvector rows stay as they are).
-- The indexer marks what it indexed (`unembedded_from`), as commits mark what it indexes.
CREATE TABLE IF NOT EXISTS embedding_models (
    id   smallserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    dims integer NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS message_vectors_emb_id;
CREATE TABLE IF NOT EXISTS message_vectors (
    session_id text     NOT NULL,
    seq        bigint   NOT NULL,
    model_id   smallint NOT NULL,
    emb_id     bigint   NOT NULL DEFAULT nextval('message_vectors_emb_id'),  -- the order vectors were stored in
    embedding  bytea    NOT NULL,
    PRIMARY KEY (session_id, seq)
);
-- A process's cache of a scope's vectors fetches only those stored since it last looked.
CREATE INDEX IF NOT EXISTS message_vectors_scope ON message_vectors (session_id, emb_id);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS unembedded_from bigint;
CREATE INDEX IF NOT EXISTS sessions_unembedded ON sessions (session_id) WHERE unembedded_from IS NOT NULL;
