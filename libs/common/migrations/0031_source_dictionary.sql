-- A source's referrer, referrer domain, channel and UTM parameters are stored once per project,
-- in `event_sources` (libs/common/event_dictionary.py), and an event row holds its source's
-- key, as migrations 0029 and 0030 did for pages and clients: ~34 bytes of an `events` row on
-- the demo, 33 distinct sources over 250,000 events. A referrer URL may carry personal data,
-- so sources are deleted as pages are (libs/common/dictionary_deletion.py): by an erasure when
-- no other event shows them, and by the tiering sweep once no hot row holds them.
--
-- The `events` view is made again with the source put back (a query naming none of its
-- columns does not join `event_sources`), and its triggers with it (the functions did not
-- change). Rows written before keep their strings and no key, and read as they are.
CREATE TABLE event_sources (
    source_key       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id       text NOT NULL,
    digest           uuid NOT NULL,  -- md5 of the eight values (Dictionary.digest)
    referrer         text,
    referrer_domain  text,
    channel          text,
    utm_source       text,
    utm_medium       text,
    utm_campaign     text,
    utm_term         text,
    utm_content      text,
    UNIQUE (project_id, digest)
);

ALTER TABLE event_rows ADD COLUMN source_key bigint;

DROP VIEW events;
CREATE VIEW events AS
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
    e.is_bot, e.non_interactive, e.properties,
    e.received_at, e.inserted_xid, e.person_key, e.device_key, e.derived_fields
FROM event_rows AS e
LEFT JOIN event_pages AS p ON p.page_key = e.page_key
LEFT JOIN event_clients AS c ON c.client_key = e.client_key
LEFT JOIN event_sources AS s ON s.source_key = e.source_key;

CREATE TRIGGER events_view_insert INSTEAD OF INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_insert();
CREATE TRIGGER events_view_delete INSTEAD OF DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_delete();
