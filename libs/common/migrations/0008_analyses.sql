-- Saved analysis definitions (docs/analytics.md): cohorts and custom metrics, per project and
-- versioned. An update inserts the next version, so a dashboard or experiment that recorded
-- (id, version) can always show what it measured; the latest version is what analyses use.
-- Deleting marks every version deleted_at (kept for the history, never used again).

CREATE TABLE analysis_cohorts (
    project_id   text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    cohort_id    text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    definition   jsonb NOT NULL,       -- {"type": "behavioral" | "first_seen" | ...}
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    PRIMARY KEY (project_id, cohort_id, version)
);

-- The persons of a static cohort version (a snapshot: typed in, or a funnel step's persons).
CREATE TABLE analysis_cohort_persons (
    project_id   text NOT NULL,
    cohort_id    text NOT NULL,
    version      integer NOT NULL,
    person_id    text NOT NULL,
    PRIMARY KEY (project_id, cohort_id, version, person_id),
    FOREIGN KEY (project_id, cohort_id, version)
        REFERENCES analysis_cohorts (project_id, cohort_id, version) ON DELETE CASCADE
);

CREATE TABLE metric_definitions (
    project_id   text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    metric_id    text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    definition   jsonb NOT NULL,       -- {"kind": "count" | "unique_persons" | "sum" | ...}
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    PRIMARY KEY (project_id, metric_id, version)
);
