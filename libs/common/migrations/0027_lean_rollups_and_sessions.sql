-- Fewer PostgreSQL bytes per stored event (docs/storage.md, "After migration 0027").

-- Hourly rollup rows are kept for all events ('*') and pageviews only
-- (libs/common/rollup_keys.py HOURLY_NAMES): hourly and local-time-zone questions about other
-- names are answered from the events. Their daily rows stay. The hour rows written before for
-- other names are never read again: delete them (the space is reused by later rows).
DELETE FROM rollups WHERE granularity = 'h' AND name NOT IN ('*', '$pageview');

-- An event's properties as they were sent (migration 0026's, and Google Analytics'
-- `nonInteraction: 1`, left out with bit 256 of `derived_fields` when the `non_interactive`
-- column says it: libs/common/model/event_encoding.py). 447 is every bit that leaves a
-- property out (all but 64, the anonymous id's).
CREATE OR REPLACE FUNCTION event_properties(
    properties jsonb, derived_fields smallint, path text, url text, title text, referrer text
) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN derived_fields IS NULL OR derived_fields & 447 = 0 THEN properties
        ELSE coalesce(properties, '{}'::jsonb) || jsonb_strip_nulls(jsonb_build_object(
            'path', CASE WHEN derived_fields & 1 <> 0 THEN path END,
            'url', CASE WHEN derived_fields & 2 <> 0 THEN url END,
            'title', CASE WHEN derived_fields & 4 <> 0 THEN title END,
            'name', CASE WHEN derived_fields & 8 <> 0 THEN title END,
            'referrer', CASE WHEN derived_fields & 16 <> 0 THEN referrer
                             WHEN derived_fields & 128 <> 0
                             THEN url_origin(url) || (properties ->> 'referrer') END,
            'search', CASE WHEN derived_fields & 32 <> 0 THEN url_search(url) END,
            'nonInteraction', CASE WHEN derived_fields & 256 <> 0 THEN 1 END))
        END;

-- Sessions: the entry page's, exit page's and traffic source's event time and id are NULL when
-- they are the session's first event's (most sessions; libs/common/model/session_encoding.py),
-- read back as (start_ts, first_event_id). `start_event_id` is renamed so a writer of the
-- previous release fails (and its batch is retried) instead of merging encoded rows as plain
-- ones during a rolling update. Rows already stored are encoded once: each is rewritten, so
-- the table grows once until vacuum lets later rows reuse the space.
ALTER TABLE sessions RENAME COLUMN start_event_id TO first_event_id;
UPDATE sessions SET
    entry_ts = nullif(entry_ts, start_ts),
    entry_event_id = nullif(entry_event_id, first_event_id),
    exit_ts = nullif(exit_ts, start_ts),
    exit_event_id = nullif(exit_event_id, first_event_id),
    source_ts = nullif(source_ts, start_ts),
    source_event_id = nullif(source_event_id, first_event_id)
WHERE entry_ts = start_ts OR exit_ts = start_ts OR source_ts = start_ts;
