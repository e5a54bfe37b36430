-- Rollups shaped for their readers (docs/storage.md, "Rollups"): hourly rows hold totals only,
-- daily rows hold totals and, for all events ('*') and pageviews, dimensions; weeks are merged
-- from days when read. Every event touched ~66 rollup keys before (ten dimensions at hour, day
-- and week, under its own name and '*'), so rollups outgrew the events they summarise; hourly
-- breakdowns, weekly rows and other names' breakdowns are now answered from days and events.
-- Daily rows already hold everything the dropped rows did at day level.
DELETE FROM rollups
WHERE granularity = 'w' OR (dim <> '' AND (granularity = 'h' OR name NOT IN ('*', '$pageview')));
DELETE FROM session_rollups WHERE granularity = 'w' OR (granularity = 'h' AND dim <> '');

-- Sessions are also counted by their exit page: the daily rows of the sessions stored so far
-- (the aggregator keeps them from here on, with the same rules: libs/common/rollup_rules.py).
INSERT INTO session_rollups (project_id, granularity, bucket, dim, value, bot,
                             sessions, bounces, duration_s, pageviews, events)
SELECT project_id, 'd', date_trunc('day', start_ts, 'UTC'), 'exit_page',
    coalesce(nullif(exit_path, ''), '(none)'), is_bot,
    count(*), sum((interactive_events < 2)::int),
    sum(extract(epoch FROM end_ts - start_ts)::float8), sum(pageviews), sum(events)
FROM sessions
GROUP BY 1, 3, 5, 6
ON CONFLICT DO NOTHING;
