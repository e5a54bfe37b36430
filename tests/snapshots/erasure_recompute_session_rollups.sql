INSERT INTO session_rollups (project_id, granularity, bucket, dim, value, bot,
                             sessions, bounces, duration_s, pageviews, events)
WITH contributions AS (
    SELECT s.project_id, date_trunc('hour', s.start_ts, 'UTC') AS hour,
        s.is_bot, s.entry_path, s.referrer_domain, s.channel, s.utm_source, s.utm_medium, s.utm_campaign, s.browser, s.os, s.device_type, s.country, s.exit_path,
        1 AS sessions, (s.interactive_events < 2)::int AS bounces, extract(epoch FROM s.end_ts - s.start_ts)::float8 AS duration_s, s.pageviews::bigint AS pageviews, s.events::bigint AS events
    FROM unnest($2::timestamptz[]) AS b(day)
    JOIN sessions s ON s.project_id = $1
        AND s.start_ts >= b.day AND s.start_ts < b.day + interval '1 day'
)
SELECT c.project_id, 'h'::"char" AS granularity, c.hour AS bucket,
    '' AS dim, '' AS value, c.is_bot AS bot,
    sum(c.sessions) AS sessions,
    sum(c.bounces) AS bounces,
    sum(c.duration_s) AS duration_s,
    sum(c.pageviews) AS pageviews,
    sum(c.events) AS events
FROM contributions c
GROUP BY c.project_id, c.hour, c.is_bot
UNION ALL
SELECT c.project_id, 'd'::"char", c.day, '', '', c.is_bot,
    sum(c.sessions) AS sessions,
    sum(c.bounces) AS bounces,
    sum(c.duration_s) AS duration_s,
    sum(c.pageviews) AS pageviews,
    sum(c.events) AS events
FROM (SELECT *, date_trunc('day', hour, 'UTC') AS day FROM contributions OFFSET 0) c
GROUP BY c.project_id, c.day, c.is_bot
UNION ALL
SELECT c.project_id, 'd'::"char", c.day, d.dim, d.value, c.is_bot,
    sum(c.sessions) AS sessions,
    sum(c.bounces) AS bounces,
    sum(c.duration_s) AS duration_s,
    sum(c.pageviews) AS pageviews,
    sum(c.events) AS events
FROM (SELECT *, date_trunc('day', hour, 'UTC') AS day FROM contributions OFFSET 0) c CROSS JOIN LATERAL unnest(
    ARRAY['page', 'referrer_domain', 'channel', 'utm_source', 'utm_medium', 'utm_campaign', 'browser', 'os', 'device_type', 'country', 'exit_page'],
    ARRAY[
        coalesce(nullif(c.entry_path, ''), '(none)'),
        coalesce(nullif(c.referrer_domain, ''), '(none)'),
        coalesce(nullif(c.channel, ''), '(none)'),
        coalesce(nullif(c.utm_source, ''), '(none)'),
        coalesce(nullif(c.utm_medium, ''), '(none)'),
        coalesce(nullif(c.utm_campaign, ''), '(none)'),
        coalesce(nullif(c.browser, ''), '(none)'),
        coalesce(nullif(c.os, ''), '(none)'),
        coalesce(nullif(c.device_type, ''), '(none)'),
        coalesce(nullif(c.country, ''), '(none)'),
        coalesce(nullif(c.exit_path, ''), '(none)')
    ]
) AS d(dim, value)
GROUP BY c.project_id, c.day, d.dim, d.value, c.is_bot
