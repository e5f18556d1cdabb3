-- Progressive summaries: each row covers the messages (from_seq .. upto_seq] that followed the previous one,
-- so the rows of a session form contiguous, non-overlapping ranges. Raw messages are never deleted.
CREATE TABLE summaries (
    session_id    text        NOT NULL,
    from_seq      bigint      NOT NULL,  -- first message covered by this chunk
    upto_seq      bigint      NOT NULL,  -- the "summarized up to" pointer after this row
    message_count integer     NOT NULL,
    text          text        NOT NULL,
    model         text        NOT NULL,
    input_tokens  integer,
    output_tokens integer,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, upto_seq)
);

-- Per-session kill switch, and a lease so one process at a time summarizes a session (it expires, so a
-- crashed holder does not block the session).
ALTER TABLE sessions ADD COLUMN summarize_enabled boolean NOT NULL DEFAULT true;
ALTER TABLE sessions ADD COLUMN summary_lease_until timestamptz;
ALTER TABLE sessions ADD COLUMN summary_lease_owner text;
