-- The `$search_engine` and `$social_network` properties that ingest's enrichment names from
-- the referrer or the UTM source are stored with the source, in `event_sources`, instead of in
-- each event's `properties`: on the demo half the events carried one, ~30 bytes of jsonb each.
-- The row leaves a string value out of `properties` and says so in `derived_fields` (512:
-- `$search_engine`, 1024: `$social_network`; libs/common/model/event_encoding.py), and the
-- `events` view's `properties` puts it back from the source. A value that is not a string stays
-- in `properties`. Sources without either keep their digest, so their rows are reused; rows
-- written before have neither bit and read as they are.
ALTER TABLE event_sources ADD COLUMN search_engine text, ADD COLUMN social_network text;

CREATE OR REPLACE VIEW events AS
SELECT e.project_id, e.ts, e.event_id, e.name, e.type, e.distinct_id, e.user_id,
    e.anonymous_id, e.session_id,
    CASE WHEN e.page_key IS NULL THEN e.path ELSE p.path END AS path,
    CASE WHEN e.page_key IS NULL THEN e.url ELSE p.url END AS url,
    CASE WHEN e.page_key IS NULL THEN e.title ELSE p.title END AS title,
    CASE WHEN e.source_key IS NULL THEN e.referrer ELSE s.referrer END AS referrer,
    CASE WHEN e.source_key IS NULL THEN e.referrer_domain ELSE s.referrer_domain END
        AS referrer_domain,
    CASE WHEN e.source_key IS NULL THEN e.channel ELSE s.channel END AS channel,
    CASE WHEN e.source_key IS NULL THEN e.utm_source ELSE s.utm_source END AS utm_source,
    CASE WHEN e.source_key IS NULL THEN e.utm_medium ELSE s.utm_medium END AS utm_medium,
    CASE WHEN e.source_key IS NULL THEN e.utm_campaign ELSE s.utm_campaign END AS utm_campaign,
    CASE WHEN e.source_key IS NULL THEN e.utm_term ELSE s.utm_term END AS utm_term,
    CASE WHEN e.source_key IS NULL THEN e.utm_content ELSE s.utm_content END AS utm_content,
    CASE WHEN e.client_key IS NULL THEN e.browser ELSE c.browser END AS browser,
    CASE WHEN e.client_key IS NULL THEN e.browser_version ELSE c.browser_version END
        AS browser_version,
    CASE WHEN e.client_key IS NULL THEN e.os ELSE c.os END AS os,
    CASE WHEN e.client_key IS NULL THEN e.os_version ELSE c.os_version END AS os_version,
    CASE WHEN e.client_key IS NULL THEN e.device_type ELSE c.device_type END AS device_type,
    e.country, e.region, e.city,
    CASE WHEN e.client_key IS NULL THEN e.locale ELSE c.locale END AS locale,
    e.is_bot, e.non_interactive,
    CASE WHEN coalesce(e.derived_fields, 0) & 1536 = 0 THEN e.properties
         ELSE coalesce(e.properties, '{}'::jsonb) || jsonb_strip_nulls(jsonb_build_object(
             '$search_engine', CASE WHEN e.derived_fields & 512 <> 0 THEN s.search_engine END,
             '$social_network', CASE WHEN e.derived_fields & 1024 <> 0 THEN s.social_network END))
    END AS properties,
    e.received_at, e.inserted_xid, e.person_key, e.device_key, e.derived_fields
FROM event_rows AS e
LEFT JOIN event_pages AS p ON p.page_key = e.page_key
LEFT JOIN event_clients AS c ON c.client_key = e.client_key
LEFT JOIN event_sources AS s ON s.source_key = e.source_key;
