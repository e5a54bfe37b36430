-- Fewer PostgreSQL bytes per stored event (docs/storage.md, "After migration 0027").

-- Hourly rollup rows are kept for all events ('*') and pageviews only
-- (libs/common/rollup_keys.py HOURLY_NAMES): hourly and local-time-zone questions about other
-- names are answered from the events. Their daily rows stay. The hour rows written before for
-- other names are never read again: delete them (the space is reused by later rows).
DELETE FROM rollups WHERE granularity = 'h' AND name NOT IN ('*', '$pageview');
