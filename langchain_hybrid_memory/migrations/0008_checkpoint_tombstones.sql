-- Checkpoints deleted one by one (a run's, or those `prune` does not keep), while their thread lives on: records
-- of them acknowledged before the delete that a process commits afterwards must stay deleted. Keyed by the thread
-- id's SHA-256, as thread_tombstones are; kept for tombstone_ttl.
CREATE TABLE IF NOT EXISTS checkpoint_tombstones (
    thread_id     text NOT NULL,                 -- hex SHA-256 of the thread id
    checkpoint_ns text NOT NULL,
    checkpoint_id text NOT NULL,
    deleted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX IF NOT EXISTS checkpoint_tombstones_deleted_at ON checkpoint_tombstones (deleted_at);
