-- Strata hot store: projects and keys, events partitioned by day, sessions, rollups.

CREATE TABLE projects (
    id                      text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name                    text NOT NULL,
    timezone                text NOT NULL DEFAULT 'UTC',
    session_timeout_s       integer NOT NULL DEFAULT 1800,
    session_max_s           integer NOT NULL DEFAULT 86400,
    session_split_midnight  boolean NOT NULL DEFAULT false,
    session_split_campaign  boolean NOT NULL DEFAULT false,
    hot_days                integer NOT NULL DEFAULT 90,
    cold_days               integer NOT NULL DEFAULT 365,
    retention_days          integer NOT NULL DEFAULT 2555,
    rate_limit_per_s        double precision,   -- NULL: the ingest default
    created_at              timestamptz NOT NULL DEFAULT now()
);

-- Keys are stored as SHA-256 of the secret (keys are 32 random bytes, so a fast hash is
-- enough); only the prefix is kept in clear so operators can tell keys apart.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    project_id  text REFERENCES projects(id) ON DELETE CASCADE,  -- NULL: admin of every project
    role        text NOT NULL CHECK (role IN ('write', 'read', 'admin')),
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE events (
    project_id       text NOT NULL,
    ts               timestamptz NOT NULL,
    event_id         text NOT NULL,
    name             text NOT NULL,
    type             text NOT NULL,
    distinct_id      text NOT NULL,
    user_id          text,
    anonymous_id     text,
    session_id       text,
    path             text,
    url              text,
    title            text,
    referrer         text,
    referrer_domain  text,
    channel          text,
    utm_source       text,
    utm_medium       text,
    utm_campaign     text,
    utm_term         text,
    utm_content      text,
    browser          text,
    browser_version  text,
    os               text,
    os_version       text,
    device_type      text,
    country          text,
    region           text,
    city             text,
    locale           text,
    is_bot           boolean NOT NULL DEFAULT false,
    non_interactive  boolean NOT NULL DEFAULT false,
    properties       jsonb,
    received_at      timestamptz NOT NULL
) PARTITION BY RANGE (ts);

CREATE INDEX events_project_ts ON events (project_id, ts);
CREATE INDEX events_project_distinct ON events (project_id, distinct_id, ts);
CREATE INDEX events_project_session ON events (project_id, session_id);

-- Dedup on the event id across partitions (a partitioned table's keys must include ts, and a
-- retried event may carry a slightly different corrected ts). Pruned past the dedup horizon.
CREATE TABLE event_ids (
    project_id   text NOT NULL,
    event_id     text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, event_id)
);

-- anonymous/device id -> the user id it was linked to by identify/alias.
CREATE TABLE person_aliases (
    project_id   text NOT NULL,
    distinct_id  text NOT NULL,
    person_id    text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, distinct_id)
);

-- Latest traits per person from identify calls.
CREATE TABLE persons (
    project_id   text NOT NULL,
    person_id    text NOT NULL,
    traits       jsonb NOT NULL DEFAULT '{}',
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    PRIMARY KEY (project_id, person_id)
);

CREATE TABLE sessions (
    project_id          text NOT NULL,
    session_id          text NOT NULL,
    distinct_id         text NOT NULL,
    user_id             text,
    start_ts            timestamptz NOT NULL,
    end_ts              timestamptz NOT NULL,
    events              integer NOT NULL,
    interactive_events  integer NOT NULL,
    pageviews           integer NOT NULL,
    entry_path          text,
    entry_ts            timestamptz,
    exit_path           text,
    exit_ts             timestamptz,
    referrer            text,
    referrer_domain     text,
    channel             text,
    utm_source          text,
    utm_medium          text,
    utm_campaign        text,
    browser             text,
    os                  text,
    device_type         text,
    country             text,
    is_bot              boolean NOT NULL DEFAULT false,
    PRIMARY KEY (project_id, session_id)
);
CREATE INDEX sessions_project_start ON sessions (project_id, start_ts);

-- Event rollups: granularity h/d/w, dim '' with value '' is the total. visitors is a
-- serialized HyperLogLog (Apache DataSketches) so uniques merge across buckets.
CREATE TABLE rollups (
    project_id   text NOT NULL,
    granularity  "char" NOT NULL,
    bucket       timestamptz NOT NULL,
    name         text NOT NULL,
    dim          text NOT NULL,
    value        text NOT NULL,
    bot          boolean NOT NULL,  -- bots are kept but excluded by default
    events       bigint NOT NULL,
    visitors     bytea NOT NULL,
    PRIMARY KEY (project_id, granularity, bucket, name, dim, value, bot)
);

-- Session rollups by the session's start bucket; kept exact by applying (new - old) deltas
-- of each session touched in a batch, inside the batch's transaction.
CREATE TABLE session_rollups (
    project_id    text NOT NULL,
    granularity   "char" NOT NULL,
    bucket        timestamptz NOT NULL,
    dim           text NOT NULL,
    value         text NOT NULL,
    bot           boolean NOT NULL,
    sessions      bigint NOT NULL,
    bounces       bigint NOT NULL,
    duration_s    double precision NOT NULL,
    pageviews     bigint NOT NULL,
    events        bigint NOT NULL,
    PRIMARY KEY (project_id, granularity, bucket, dim, value, bot)
);

CREATE TABLE sessionizer_checkpoints (
    stream       text NOT NULL,
    partition    integer NOT NULL,
    stream_seq   bigint NOT NULL,
    state        bytea NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition)
);

-- Creates the day partitions of `events` from `first_day` for `days` days; idempotent.
CREATE FUNCTION ensure_event_partitions(first_day date, days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        part := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
END $$;
