WITH batch AS (
    SELECT DISTINCT ON (project_id, event_id) *
    FROM (SELECT (j.e->>0)::text AS project_id, (j.e->>1)::timestamptz AS ts, (j.e->>2)::text AS event_id, (j.e->>3)::text AS name, (j.e->>4)::text AS type, (j.e->>5)::text AS distinct_id, (j.e->>6)::text AS user_id, (j.e->>7)::text AS anonymous_id, (j.e->>8)::text AS session_id, (j.e->>9)::text AS path, (j.e->>10)::text AS url, (j.e->>11)::text AS title, (j.e->>12)::text AS referrer, (j.e->>13)::text AS referrer_domain, (j.e->>14)::text AS channel, (j.e->>15)::text AS utm_source, (j.e->>16)::text AS utm_medium, (j.e->>17)::text AS utm_campaign, (j.e->>18)::text AS utm_term, (j.e->>19)::text AS utm_content, (j.e->>20)::text AS browser, (j.e->>21)::text AS browser_version, (j.e->>22)::text AS os, (j.e->>23)::text AS os_version, (j.e->>24)::text AS device_type, (j.e->>25)::text AS country, (j.e->>26)::text AS region, (j.e->>27)::text AS city, (j.e->>28)::text AS locale, (j.e->>29)::boolean AS is_bot, (j.e->>30)::boolean AS non_interactive, (j.e->>31)::timestamptz AS received_at, j.e->32 AS properties, j.ordinality FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS j(e, ordinality)) b
    ORDER BY project_id, event_id, ordinality
), new_ids AS (
    INSERT INTO event_ids (project_id, event_id)
    SELECT project_id, event_id FROM batch
    ON CONFLICT DO NOTHING
    RETURNING project_id, event_id
), stored AS (
    INSERT INTO events (project_id, ts, event_id, name, type, distinct_id, user_id, anonymous_id, session_id, path, url, title, referrer, referrer_domain, channel, utm_source, utm_medium, utm_campaign, utm_term, utm_content, browser, browser_version, os, os_version, device_type, country, region, city, locale, is_bot, non_interactive, received_at, properties)
    SELECT b.project_id, b.ts, b.event_id, b.name, b.type, b.distinct_id, b.user_id, b.anonymous_id, b.session_id, b.path, b.url, b.title, b.referrer, b.referrer_domain, b.channel, b.utm_source, b.utm_medium, b.utm_campaign, b.utm_term, b.utm_content, b.browser, b.browser_version, b.os, b.os_version, b.device_type, b.country, b.region, b.city, b.locale, b.is_bot, b.non_interactive, b.received_at, b.properties
    FROM batch b JOIN new_ids n USING (project_id, event_id)
)
SELECT (b.ordinality - 1)::int FROM batch b JOIN new_ids n USING (project_id, event_id)
