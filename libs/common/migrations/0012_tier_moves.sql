-- Tier moves (docs/tiering.md): which (project, UTC day) had its PostgreSQL rows removed once
-- its day files held them, and the restore jobs that make Archive-tier day files readable.

-- One row per project and day whose rows left PostgreSQL. `watermark` is the xid below which
-- every row of the day is in active parts and no longer in `events`: rows at or past it are
-- late rows still hot (the scan reads them from PostgreSQL). The delete and this row commit in
-- one transaction, so a crash leaves either both or neither.
CREATE TABLE day_tiers (
    project_id          text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    day                 date NOT NULL,
    tier                text NOT NULL CHECK (tier IN ('cold', 'archive', 'deleted')),
    watermark           bigint NOT NULL,
    rows_moved          bigint NOT NULL DEFAULT 0,
    moved_at            timestamptz NOT NULL DEFAULT now(),
    archived_at         timestamptz,
    deleted_at          timestamptz,
    PRIMARY KEY (project_id, day)
);

-- When a part moved to the Archive storage tier (retention counts from the day itself).
ALTER TABLE day_files ADD COLUMN IF NOT EXISTS archived_at timestamptz;

-- A request for Archive-tier days starts one restore job: every part it needs is restored for
-- `hours`; the job is `restored` once all of them are readable.
CREATE TABLE restores (
    restore_id      text PRIMARY KEY,              -- ULID
    project_id      text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    first_day       date NOT NULL,
    last_day        date NOT NULL,
    object_names    text[] NOT NULL,
    hours           integer NOT NULL,
    state           text NOT NULL DEFAULT 'restoring'
                    CHECK (state IN ('restoring', 'restored', 'failed')),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    restored_at     timestamptz,
    expires_at      timestamptz,
    error           text
);
CREATE INDEX restores_pending ON restores (requested_at) WHERE state = 'restoring';
