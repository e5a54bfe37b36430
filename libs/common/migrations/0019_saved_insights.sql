-- The dashboard's saved work (docs/dashboard.md): insights (one saved analysis with its chart)
-- and dashboards (insights laid out as tiles), versioned exactly like cohorts and metric
-- definitions (0008): an update inserts the next version, a delete marks every version.
-- Annotations mark a moment on the time charts; share links show one dashboard read-only.

CREATE TABLE insights (
    project_id   text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    insight_id   text NOT NULL,
    version      integer NOT NULL CHECK (version >= 1),
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    definition   jsonb NOT NULL,       -- {"kind": "metrics" | "funnel" | ..., "query": {...}}
    created_by   text,                 -- users.id, or NULL when saved with an API key
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    PRIMARY KEY (project_id, insight_id, version)
);

CREATE TABLE dashboards (
    project_id    text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    dashboard_id  text NOT NULL,
    version       integer NOT NULL CHECK (version >= 1),
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    definition    jsonb NOT NULL,      -- {"tiles": [{"insight_id": ..., "width": 1 | 2}], ...}
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    PRIMARY KEY (project_id, dashboard_id, version)
);

-- Who saved each version of the existing definitions, now that people (not only keys) do.
ALTER TABLE analysis_cohorts ADD COLUMN created_by text;
ALTER TABLE metric_definitions ADD COLUMN created_by text;

CREATE TABLE annotations (
    project_id     text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    annotation_id  text NOT NULL,
    at             timestamptz NOT NULL,
    text           text NOT NULL,
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    PRIMARY KEY (project_id, annotation_id)
);
CREATE INDEX annotations_at ON annotations (project_id, at);

-- A read-only link to one dashboard. The token is the whole credential of the link and is
-- shown again to the project's analysts, so it is kept as is (it opens nothing a database
-- reader could not read anyway); revoking sets revoked_at and the link stops at once.
CREATE TABLE dashboard_shares (
    token         text PRIMARY KEY,
    project_id    text NOT NULL,
    dashboard_id  text NOT NULL,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE
);
CREATE INDEX dashboard_shares_dashboard ON dashboard_shares (project_id, dashboard_id);
