-- A session row is a function of its events whatever the batching (docs/storage.md,
-- "Sessions"): each value taken from one event of the session (the first event, the entry and
-- exit pageviews, the first user id, the first traffic source) keeps that event's time and id,
-- so a merge compares (ts, event_id) exactly as a recomputation orders the events, and two
-- batches give the same row whichever commits first. Rows written before this migration have
-- NULL ids: a tie against them keeps the stored value (and the later batch's exit).
ALTER TABLE sessions
    ADD COLUMN start_event_id text,
    ADD COLUMN entry_event_id text,
    ADD COLUMN exit_event_id text,
    ADD COLUMN user_ts timestamptz,
    ADD COLUMN user_event_id text,
    ADD COLUMN source_ts timestamptz,
    ADD COLUMN source_event_id text;
