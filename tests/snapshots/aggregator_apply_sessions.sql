WITH merged AS (
    SELECT b.project_id, b.session_id,
        least(o.start_ts, b.start_ts) AS start_ts,
        greatest(o.end_ts, b.end_ts) AS end_ts,
        coalesce(o.events, 0) + b.events AS events,
        coalesce(o.interactive_events, 0) + b.interactive_events AS interactive_events,
        coalesce(o.pageviews, 0) + b.pageviews AS pageviews,
        CASE WHEN f.new_user THEN b.user_id ELSE o.user_id END AS user_id, CASE WHEN f.new_user THEN b.user_ts ELSE o.user_ts END AS user_ts, CASE WHEN f.new_user THEN b.user_event_id ELSE o.user_event_id END AS user_event_id,
        CASE WHEN f.new_entry THEN b.entry_path ELSE o.entry_path END AS entry_path, CASE WHEN f.new_entry THEN b.entry_ts ELSE o.entry_ts END AS entry_ts, CASE WHEN f.new_entry THEN b.entry_event_id ELSE o.entry_event_id END AS entry_event_id,
        CASE WHEN f.new_exit THEN b.exit_path ELSE o.exit_path END AS exit_path, CASE WHEN f.new_exit THEN b.exit_ts ELSE o.exit_ts END AS exit_ts, CASE WHEN f.new_exit THEN b.exit_event_id ELSE o.exit_event_id END AS exit_event_id,
        CASE WHEN f.new_source THEN b.referrer ELSE o.referrer END AS referrer, CASE WHEN f.new_source THEN b.referrer_domain ELSE o.referrer_domain END AS referrer_domain, CASE WHEN f.new_source THEN b.channel ELSE o.channel END AS channel, CASE WHEN f.new_source THEN b.utm_source ELSE o.utm_source END AS utm_source, CASE WHEN f.new_source THEN b.utm_medium ELSE o.utm_medium END AS utm_medium, CASE WHEN f.new_source THEN b.utm_campaign ELSE o.utm_campaign END AS utm_campaign, CASE WHEN f.new_source THEN b.source_ts ELSE o.source_ts END AS source_ts, CASE WHEN f.new_source THEN b.source_event_id ELSE o.source_event_id END AS source_event_id,
        CASE WHEN f.new_first THEN b.distinct_id ELSE o.distinct_id END AS distinct_id, CASE WHEN f.new_first THEN b.first_event_id ELSE o.first_event_id END AS first_event_id, CASE WHEN f.new_first THEN b.browser ELSE o.browser END AS browser, CASE WHEN f.new_first THEN b.os ELSE o.os END AS os, CASE WHEN f.new_first THEN b.device_type ELSE o.device_type END AS device_type, CASE WHEN f.new_first THEN b.country ELSE o.country END AS country, CASE WHEN f.new_first THEN b.is_bot ELSE o.is_bot END AS is_bot,
        o.session_id IS NOT NULL AS replaces, o.ctid AS stored_ctid,
        o.start_ts AS old_start_ts, o.end_ts AS old_end_ts, o.interactive_events AS old_interactive_events, o.pageviews AS old_pageviews, o.events AS old_events, o.is_bot AS old_is_bot, o.entry_path AS old_entry_path, o.referrer_domain AS old_referrer_domain, o.channel AS old_channel, o.utm_source AS old_utm_source, o.utm_medium AS old_utm_medium, o.utm_campaign AS old_utm_campaign, o.browser AS old_browser, o.os AS old_os, o.device_type AS old_device_type, o.country AS old_country, o.exit_path AS old_exit_path
    FROM (SELECT (j.e->>0)::text AS project_id, (j.e->>1)::text AS session_id, (j.e->>2)::int AS events, (j.e->>3)::int AS interactive_events, (j.e->>4)::int AS pageviews, (j.e->>5)::timestamptz AS end_ts, (j.e->>6)::timestamptz AS start_ts, (j.e->>7)::text AS first_event_id, (j.e->>8)::text AS distinct_id, (j.e->>9)::text AS browser, (j.e->>10)::text AS os, (j.e->>11)::text AS device_type, (j.e->>12)::text AS country, (j.e->>13)::boolean AS is_bot, (j.e->>14)::text AS user_id, (j.e->>15)::timestamptz AS user_ts, (j.e->>16)::text AS user_event_id, (j.e->>17)::text AS referrer, (j.e->>18)::text AS referrer_domain, (j.e->>19)::text AS channel, (j.e->>20)::text AS utm_source, (j.e->>21)::text AS utm_medium, (j.e->>22)::text AS utm_campaign, (j.e->>23)::timestamptz AS source_ts, (j.e->>24)::text AS source_event_id, (j.e->>25)::text AS entry_path, (j.e->>26)::timestamptz AS entry_ts, (j.e->>27)::text AS entry_event_id, (j.e->>28)::text AS exit_path, (j.e->>29)::timestamptz AS exit_ts, (j.e->>30)::text AS exit_event_id, j.ordinality FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS j(e, ordinality)) b
    -- One primary-key probe per session (a subquery with FOR UPDATE is never flattened into a
    -- hash join that would scan every session), locking the stored row.
    LEFT JOIN LATERAL (
        SELECT s.ctid, s.project_id, s.session_id, s.distinct_id, s.user_id, s.start_ts, s.end_ts, s.events, s.interactive_events, s.pageviews, s.entry_path, CASE WHEN s.pageviews > 0 THEN coalesce(s.entry_ts, s.start_ts) END AS entry_ts, s.exit_path, CASE WHEN s.pageviews > 0 THEN coalesce(s.exit_ts, s.start_ts) END AS exit_ts, s.referrer, s.referrer_domain, s.channel, s.utm_source, s.utm_medium, s.utm_campaign, s.browser, s.os, s.device_type, s.country, s.is_bot, s.first_event_id, CASE WHEN s.pageviews > 0 THEN coalesce(s.entry_event_id, s.first_event_id) END AS entry_event_id, CASE WHEN s.pageviews > 0 THEN coalesce(s.exit_event_id, s.first_event_id) END AS exit_event_id, s.user_ts, s.user_event_id, coalesce(s.source_ts, s.start_ts) AS source_ts, coalesce(s.source_event_id, s.first_event_id) AS source_event_id FROM sessions s
        WHERE s.project_id = b.project_id AND s.session_id = b.session_id
        FOR UPDATE
    ) o ON true
    CROSS JOIN LATERAL (
        SELECT o.session_id IS NULL OR (b.start_ts, b.first_event_id COLLATE "C") < (o.start_ts, coalesce(o.first_event_id, '') COLLATE "C") AS new_first,
        b.user_ts IS NOT NULL AND (coalesce(o.user_id, '') = '' OR (o.user_ts IS NOT NULL AND (b.user_ts, b.user_event_id COLLATE "C") < (o.user_ts, coalesce(o.user_event_id, '') COLLATE "C"))) AS new_user,
        b.entry_ts IS NOT NULL AND (o.entry_ts IS NULL OR (b.entry_ts, b.entry_event_id COLLATE "C") < (o.entry_ts, coalesce(o.entry_event_id, '') COLLATE "C")) AS new_entry,
        b.exit_ts IS NOT NULL AND (o.exit_ts IS NULL OR (o.exit_ts, coalesce(o.exit_event_id, '') COLLATE "C") < (b.exit_ts, b.exit_event_id COLLATE "C")) AS new_exit,
        b.source_ts IS NOT NULL AND (o.channel IS NULL OR (b.source_ts, b.source_event_id COLLATE "C") < (o.source_ts, coalesce(o.source_event_id, '') COLLATE "C")) AS new_source
        OFFSET 0
    ) f
), inserted AS (  -- sessions not stored: a plain insert (see _apply_sessions)
    INSERT INTO sessions (project_id, session_id, distinct_id, user_id, start_ts, end_ts, events, interactive_events, pageviews, entry_path, entry_ts, exit_path, exit_ts, referrer, referrer_domain, channel, utm_source, utm_medium, utm_campaign, browser, os, device_type, country, is_bot, first_event_id, entry_event_id, exit_event_id, user_ts, user_event_id, source_ts, source_event_id)
    SELECT project_id, session_id, distinct_id, user_id, start_ts, end_ts, events, interactive_events, pageviews, entry_path, nullif(entry_ts, start_ts), exit_path, nullif(exit_ts, start_ts), referrer, referrer_domain, channel, utm_source, utm_medium, utm_campaign, browser, os, device_type, country, is_bot, first_event_id, nullif(entry_event_id, first_event_id), nullif(exit_event_id, first_event_id), user_ts, user_event_id, nullif(source_ts, start_ts), nullif(source_event_id, first_event_id) FROM merged WHERE NOT replaces
    ORDER BY project_id, session_id
), updated AS (  -- stored ones: the version read and locked above, found by its ctid
    UPDATE sessions AS s SET (distinct_id, user_id, start_ts, end_ts, events, interactive_events, pageviews, entry_path, entry_ts, exit_path, exit_ts, referrer, referrer_domain, channel, utm_source, utm_medium, utm_campaign, browser, os, device_type, country, is_bot, first_event_id, entry_event_id, exit_event_id, user_ts, user_event_id, source_ts, source_event_id)
        = (m.distinct_id, m.user_id, m.start_ts, m.end_ts, m.events, m.interactive_events, m.pageviews, m.entry_path, nullif(m.entry_ts, m.start_ts), m.exit_path, nullif(m.exit_ts, m.start_ts), m.referrer, m.referrer_domain, m.channel, m.utm_source, m.utm_medium, m.utm_campaign, m.browser, m.os, m.device_type, m.country, m.is_bot, m.first_event_id, nullif(m.entry_event_id, m.first_event_id), nullif(m.exit_event_id, m.first_event_id), m.user_ts, m.user_event_id, nullif(m.source_ts, m.start_ts), nullif(m.source_event_id, m.first_event_id))
    FROM merged AS m WHERE m.replaces AND s.ctid = m.stored_ctid
    RETURNING 1
), counted AS (  -- what each session's new row and the row it replaces count
    SELECT project_id, replaces,
        start_ts, end_ts, interactive_events, pageviews, events, is_bot, entry_path, referrer_domain, channel, utm_source, utm_medium, utm_campaign, browser, os, device_type, country, exit_path, old_start_ts, old_end_ts, old_interactive_events, old_pageviews, old_events, old_is_bot, old_entry_path, old_referrer_domain, old_channel, old_utm_source, old_utm_medium, old_utm_campaign, old_browser, old_os, old_device_type, old_country, old_exit_path,
        date_trunc('hour', start_ts, 'UTC') AS hour,
        date_trunc('hour', old_start_ts, 'UTC') AS old_hour,
        (interactive_events < 2)::int AS bounces,
        (old_interactive_events < 2)::int AS old_bounces,
        extract(epoch FROM end_ts - start_ts)::float8 AS duration_s,
        extract(epoch FROM old_end_ts - old_start_ts)::float8 AS old_duration_s
    FROM merged
), contribution AS (  -- each session's new row counts +1, the row it replaces -1
    SELECT project_id, hour, is_bot, entry_path, referrer_domain, channel, utm_source, utm_medium, utm_campaign, browser, os, device_type, country, exit_path,
        CASE WHEN stays THEN 0 ELSE 1 END AS sessions,
        bounces - CASE WHEN stays THEN old_bounces ELSE 0 END AS bounces,
        duration_s - CASE WHEN stays THEN old_duration_s ELSE 0 END AS duration_s,
        pageviews - CASE WHEN stays THEN old_pageviews ELSE 0 END AS pageviews,
        events - CASE WHEN stays THEN old_events ELSE 0 END AS events
    FROM (SELECT *, replaces
        AND hour = old_hour
        AND is_bot IS NOT DISTINCT FROM old_is_bot
        AND entry_path IS NOT DISTINCT FROM old_entry_path
        AND referrer_domain IS NOT DISTINCT FROM old_referrer_domain
        AND channel IS NOT DISTINCT FROM old_channel
        AND utm_source IS NOT DISTINCT FROM old_utm_source
        AND utm_medium IS NOT DISTINCT FROM old_utm_medium
        AND utm_campaign IS NOT DISTINCT FROM old_utm_campaign
        AND browser IS NOT DISTINCT FROM old_browser
        AND os IS NOT DISTINCT FROM old_os
        AND device_type IS NOT DISTINCT FROM old_device_type
        AND country IS NOT DISTINCT FROM old_country
        AND exit_path IS NOT DISTINCT FROM old_exit_path AS stays FROM counted) c
    UNION ALL
    SELECT project_id, old_hour, old_is_bot, old_entry_path, old_referrer_domain, old_channel, old_utm_source, old_utm_medium, old_utm_campaign, old_browser, old_os, old_device_type, old_country, old_exit_path,
        -1, -old_bounces, -old_duration_s, -old_pageviews, -old_events
    FROM counted WHERE replaces AND NOT (replaces
        AND hour = old_hour
        AND is_bot IS NOT DISTINCT FROM old_is_bot
        AND entry_path IS NOT DISTINCT FROM old_entry_path
        AND referrer_domain IS NOT DISTINCT FROM old_referrer_domain
        AND channel IS NOT DISTINCT FROM old_channel
        AND utm_source IS NOT DISTINCT FROM old_utm_source
        AND utm_medium IS NOT DISTINCT FROM old_utm_medium
        AND utm_campaign IS NOT DISTINCT FROM old_utm_campaign
        AND browser IS NOT DISTINCT FROM old_browser
        AND os IS NOT DISTINCT FROM old_os
        AND device_type IS NOT DISTINCT FROM old_device_type
        AND country IS NOT DISTINCT FROM old_country
        AND exit_path IS NOT DISTINCT FROM old_exit_path)
), deltas AS (  -- the rollup rules (libs/common/rollup_rules.py) over the contributions
    SELECT c.project_id, 'h'::"char" AS granularity, c.hour AS bucket,
        '' AS dim, '' AS value, c.is_bot AS bot,
        sum(c.sessions) AS sessions,
        sum(c.bounces) AS bounces,
        sum(c.duration_s) AS duration_s,
        sum(c.pageviews) AS pageviews,
        sum(c.events) AS events
    FROM contribution c
    GROUP BY c.project_id, c.hour, c.is_bot
    UNION ALL
    SELECT c.project_id, 'd'::"char", c.day, '', '', c.is_bot,
        sum(c.sessions) AS sessions,
        sum(c.bounces) AS bounces,
        sum(c.duration_s) AS duration_s,
        sum(c.pageviews) AS pageviews,
        sum(c.events) AS events
    FROM (SELECT *, date_trunc('day', hour, 'UTC') AS day FROM contribution OFFSET 0) c
    GROUP BY c.project_id, c.day, c.is_bot
    UNION ALL
    SELECT c.project_id, 'd'::"char", c.day, d.dim, d.value, c.is_bot,
        sum(c.sessions) AS sessions,
        sum(c.bounces) AS bounces,
        sum(c.duration_s) AS duration_s,
        sum(c.pageviews) AS pageviews,
        sum(c.events) AS events
    FROM (SELECT *, date_trunc('day', hour, 'UTC') AS day FROM contribution OFFSET 0) c CROSS JOIN LATERAL unnest(
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
), rolled AS (
    INSERT INTO session_rollups AS r (project_id, granularity, bucket, dim, value, bot,
                                      sessions, bounces, duration_s, pageviews, events)
    SELECT project_id, granularity, bucket, dim, value, bot, sessions, bounces, duration_s, pageviews, events
    FROM deltas
    WHERE sessions <> 0 OR bounces <> 0 OR duration_s <> 0 OR pageviews <> 0 OR events <> 0
    ORDER BY project_id, granularity, bucket, dim, value, bot
    ON CONFLICT (project_id, granularity, bucket, dim, value, bot) DO UPDATE SET
        sessions = r.sessions + excluded.sessions,
        bounces = r.bounces + excluded.bounces,
        duration_s = r.duration_s + excluded.duration_s,
        pageviews = r.pageviews + excluded.pageviews,
        events = r.events + excluded.events
    RETURNING project_id, granularity::text AS g, bucket, dim, value, bot, sessions
)
SELECT (SELECT count(*) FROM merged WHERE replaces) AS stored,
    (SELECT count(*) FROM updated) AS updated,
    (SELECT jsonb_agg(jsonb_build_array(project_id, g, bucket, dim, value, bot))
     FROM rolled WHERE sessions = 0) AS emptied
