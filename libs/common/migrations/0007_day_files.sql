-- Columnar day files (docs/storage.md, "Columnar day files"): every closed UTC day of `events`
-- is also written as Parquet parts in the object store, catalogued here.

-- Which transaction inserted each row, as a 64-bit (epoch-qualified, never wrapping) xid.
-- A part covers the rows with xid_from <= inserted_xid < xid_to, where xid_to is the xmin of
-- the export's snapshot: every transaction below it had ended, so no row can commit later with
-- a smaller xid. (received_at can not serve: an event received before an export may commit
-- after it, and would be skipped forever.) Rows that existed before this migration read 0.
-- The constant default first, so adding the column rewrites nothing; the volatile default
-- then applies to new rows only.
ALTER TABLE events ADD COLUMN IF NOT EXISTS inserted_xid bigint NOT NULL DEFAULT 0;
ALTER TABLE events ALTER COLUMN inserted_xid SET DEFAULT (pg_current_xact_id()::text::bigint);
-- Late rows of an exported day are found by `inserted_xid >= watermark`. A BRIN index costs
-- next to nothing on insert (rows arrive roughly in xid order) and answers that in a few pages
-- per day partition.
CREATE INDEX IF NOT EXISTS events_inserted_xid ON events USING brin (inserted_xid)
    WITH (autosummarize = on);

-- person_aliases rows are only inserted (a link never changes; erasure deletes): the query
-- service keeps each project's aliases in memory and reads only the rows added since, by the
-- same kind of xid watermark.
ALTER TABLE person_aliases ADD COLUMN IF NOT EXISTS inserted_xid bigint NOT NULL DEFAULT 0;
ALTER TABLE person_aliases
    ALTER COLUMN inserted_xid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS person_aliases_inserted_xid
    ON person_aliases (project_id, inserted_xid);

-- One row per Parquet object ("part") of one project's UTC day. A day may have several active
-- parts (the first export, then one per batch of late rows), covering disjoint, contiguous
-- inserted_xid ranges. Written by the tiering service as a state machine:
--   writing    catalogued before the object is put; a crash leaves it for recovery to delete
--   verified   the object was read back: row count, event-id checksum, MD5, page checksums
--   active     served to queries
--   superseded replaced by superseded_by (a merge of late parts, an erasure rewrite); its
--              object is deleted after a grace period so in-flight readers finish
--   deleted    its object is gone (failed verification, crash recovery, superseded, retention)
-- storage_tier / archival_state / restored_until follow the object for the cold and archive
-- moves (Standard -> Archive; restores make an Archive object readable until restored_until).
CREATE TABLE day_files (
    part_id         text PRIMARY KEY,              -- ULID, also the object name's part-<ulid>
    project_id      text NOT NULL,
    day             date NOT NULL,                 -- UTC day of every row's ts
    object_name     text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('export', 'late', 'merge', 'rewrite')),
    state           text NOT NULL DEFAULT 'writing'
                    CHECK (state IN ('writing', 'verified', 'active', 'superseded', 'deleted')),
    xid_from        bigint NOT NULL,
    xid_to          bigint NOT NULL,
    rows            bigint,
    bytes           bigint,
    md5             text,                          -- base64 MD5 of the object (OCI's form)
    etag            text,
    ids_checksum    text,                          -- md5 hex of the part's sorted event ids
    min_ts          timestamptz,
    max_ts          timestamptz,
    storage_tier    text NOT NULL DEFAULT 'Standard'
                    CHECK (storage_tier IN ('Standard', 'InfrequentAccess', 'Archive')),
    archival_state  text CHECK (archival_state IN ('Archived', 'Restoring', 'Restored')),
    restored_until  timestamptz,
    superseded_by   text REFERENCES day_files (part_id),
    error           text,                          -- why a part was deleted before activation
    created_at      timestamptz NOT NULL DEFAULT now(),
    verified_at     timestamptz,
    activated_at    timestamptz,
    superseded_at   timestamptz,
    deleted_at      timestamptz,
    CHECK (xid_from < xid_to)
);
-- Planning a scan or an export reads the live parts of a project's days.
CREATE INDEX day_files_live ON day_files (project_id, day)
    WHERE state IN ('writing', 'verified', 'active');
-- Superseded parts wait here for their objects to be deleted.
CREATE INDEX day_files_superseded ON day_files (superseded_at) WHERE state = 'superseded';
