-- GDPR erasure and access (docs/privacy.md, "Erasure and access (GDPR)").

-- One row per erasure request. The API deletes the person's rows from PostgreSQL and inserts
-- this row (and erased_ids) in one transaction; the tiering service then rewrites the day files
-- holding them and recomputes the event rollups of the weeks touched:
--   rewriting    day files are being checked and rewritten (archived ones restored first)
--   recomputing  every file is clean; rollups of the touched weeks are being recomputed
--   completed    nothing of the person is left; erased_ids rows are removed
CREATE TABLE erasure_requests (
    id                  bigserial PRIMARY KEY,
    project_id          text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id             text,
    distinct_ids        text[] NOT NULL,       -- every id of the person, aliases resolved
    state               text NOT NULL DEFAULT 'rewriting'
                        CHECK (state IN ('rewriting', 'recomputing', 'completed')),
    requested_by        text NOT NULL,         -- api_keys.id
    hot_events_deleted  bigint NOT NULL DEFAULT 0,
    sessions_deleted    bigint NOT NULL DEFAULT 0,
    hot_days            date[] NOT NULL DEFAULT '{}',  -- UTC days the hot deletion touched
    files_checked       integer NOT NULL DEFAULT 0,
    files_total         integer,               -- active parts to check (set on the first pass)
    files_rewritten     integer NOT NULL DEFAULT 0,
    bytes_rewritten     bigint NOT NULL DEFAULT 0,
    cold_events_deleted bigint NOT NULL DEFAULT 0,
    files_restoring     integer NOT NULL DEFAULT 0,
    error               text,                  -- the last pass's failure, retried next pass
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz
);
CREATE INDEX erasure_requests_open ON erasure_requests (id) WHERE state <> 'completed';

-- What each pending request did to each part it checked, so a rerun after a crash resumes
-- where the last one stopped (a part with a row here is done, or waits for its restore).
CREATE TABLE erasure_parts (
    request_id   bigint NOT NULL REFERENCES erasure_requests (id) ON DELETE CASCADE,
    part_id      text NOT NULL REFERENCES day_files (part_id),
    outcome      text NOT NULL CHECK (outcome IN ('clean', 'restoring', 'rewritten')),
    new_part_id  text REFERENCES day_files (part_id),
    rows_removed bigint NOT NULL DEFAULT 0,
    bytes        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, part_id)
);

-- Ids whose rows event scans must hide until their files are rewritten. Small (the open
-- requests' ids only); the query service keeps it in memory and reloads it when
-- (count, max(request_id)) of a project changes.
CREATE TABLE erased_ids (
    project_id   text NOT NULL,
    distinct_id  text NOT NULL,
    request_id   bigint NOT NULL REFERENCES erasure_requests (id) ON DELETE CASCADE,
    PRIMARY KEY (project_id, distinct_id, request_id)
);

-- Every erasure and export: who (key id), what, when and the outcome.
CREATE TABLE privacy_audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    key_id      text NOT NULL,
    project_id  text NOT NULL,
    action      text NOT NULL CHECK (action IN ('erasure', 'export')),
    subject     text NOT NULL,                 -- the user id or distinct ids asked about
    outcome     text NOT NULL,                 -- 'accepted', 'completed', 'failed: ...', ...
    request_id  bigint,                        -- erasure_requests.id for erasures
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX privacy_audit_log_project_at ON privacy_audit_log (project_id, at);
