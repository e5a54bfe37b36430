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
