-- A deleted checkpoint thread: records acknowledged before the delete (up to its newest checkpoint id) that
-- another process commits afterwards must stay deleted. Keyed by the thread id's SHA-256, as sessions' are.
CREATE TABLE IF NOT EXISTS thread_tombstones (
    thread_id  text PRIMARY KEY,               -- hex SHA-256 of the deleted thread id
    upto       text NOT NULL COLLATE "C",      -- the newest checkpoint id the thread had
    deleted_at timestamptz NOT NULL DEFAULT now()
);
