-- A client's browser, browser version, OS, OS version, device type and locale are stored once
-- per project, in `event_clients` (libs/common/event_dictionary.py), and an event row holds
-- its client's key, as migration 0029 did for pages: ~37 bytes of an `events` row on the
-- demo, 233 distinct clients over 250,000 events. These values are no one's personal data,
-- and a project's clients are few, so their rows are never deleted.
--
-- The `events` view is made again with the client put back (a query naming none of its
-- columns joins neither dictionary); its triggers for writers of the release before go with
-- the old view and are made again (the functions did not change). Rows written before keep
-- their strings and no key, and read as they are.
CREATE TABLE event_clients (
    client_key       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id       text NOT NULL,
    digest           uuid NOT NULL,  -- md5 of the six values (Dictionary.digest)
    browser          text,
    browser_version  text,
    os               text,
    os_version       text,
    device_type      text,
    locale           text,
    UNIQUE (project_id, digest)
);

ALTER TABLE event_rows ADD COLUMN client_key bigint;

DROP VIEW events;
CREATE VIEW events AS
SELECT e.project_id, e.ts, e.event_id, e.name, e.type, e.distinct_id, e.user_id,
    e.anonymous_id, e.session_id,
    CASE WHEN e.page_key IS NULL THEN e.path ELSE p.path END AS path,
    CASE WHEN e.page_key IS NULL THEN e.url ELSE p.url END AS url,
    CASE WHEN e.page_key IS NULL THEN e.title ELSE p.title END AS title,
    e.referrer, e.referrer_domain, e.channel, e.utm_source, e.utm_medium, e.utm_campaign,
    e.utm_term, e.utm_content,
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
LEFT JOIN event_clients AS c ON c.client_key = e.client_key;

CREATE TRIGGER events_view_insert INSTEAD OF INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_insert();
CREATE TRIGGER events_view_delete INSTEAD OF DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_delete();
