-- LangGraph checkpoints (HybridSaver). One row per checkpoint; channel values by version, shared by the
-- checkpoints that reference them; pending writes per checkpoint and task.
CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id            text NOT NULL,
    checkpoint_ns        text NOT NULL DEFAULT '',
    checkpoint_id        text NOT NULL,
    parent_checkpoint_id text,
    run_id               text,
    type                 text NOT NULL,
    checkpoint           bytea NOT NULL,           -- the checkpoint without its channel values
    channel_versions     jsonb NOT NULL,           -- channel -> version: which blobs it references
    metadata_type        text NOT NULL,
    metadata_blob        bytea NOT NULL,           -- exact metadata (the serializer's form)
    metadata             jsonb NOT NULL,           -- the same as JSON, for filters
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX IF NOT EXISTS checkpoints_run_id ON checkpoints (run_id) WHERE run_id IS NOT NULL;
-- LangGraph copies `configurable.user_id` into each checkpoint's metadata: erasing a user finds its threads here.
CREATE INDEX IF NOT EXISTS checkpoints_user_id ON checkpoints ((metadata ->> 'user_id'))
    WHERE metadata ? 'user_id';

-- A list channel whose items carry ids (an agent's messages) is stored as the items new since the previous
-- version plus a reference to it (type 'hm-delta/...'), not the whole list again.
CREATE TABLE IF NOT EXISTS checkpoint_blobs (
    thread_id     text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    channel       text NOT NULL,
    version       text NOT NULL,
    type          text NOT NULL,
    blob          bytea,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);

CREATE TABLE IF NOT EXISTS checkpoint_writes (
    thread_id     text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    checkpoint_id text NOT NULL,
    task_id       text NOT NULL,
    idx           integer NOT NULL,
    channel       text NOT NULL,
    type          text NOT NULL,
    blob          bytea NOT NULL,
    task_path     text NOT NULL DEFAULT '',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
