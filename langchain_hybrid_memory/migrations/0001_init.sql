-- Messages are one row each, ordered per session by `seq` (never by time).
-- `body` is ASCII JSON (see messages.py): JSONB would reject \u0000, text stores it escaped.
CREATE TABLE sessions (
    session_id     text PRIMARY KEY,
    user_id        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_active_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX sessions_active_idx ON sessions (last_active_at DESC);

CREATE TABLE messages (
    session_id text        NOT NULL,
    seq        bigint      NOT NULL,
    msg_id     text        NOT NULL,
    role       text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, seq),
    UNIQUE (session_id, msg_id)
);

-- Sessions written while Redis was unreachable: their cached window (if Redis kept it) is stale and is
-- dropped before the cache is used again.
CREATE TABLE cache_dirty (
    session_id text PRIMARY KEY,
    marked_at  timestamptz NOT NULL DEFAULT now()
);

-- A cleared session's write-behind entries still in flight must not bring it back.
CREATE TABLE tombstones (
    session_id text PRIMARY KEY,
    upto_seq   bigint      NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
