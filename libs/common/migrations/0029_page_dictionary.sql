-- A page's url, title and path are stored once per project, in `event_pages`, and an event row
-- holds its page's key (libs/common/event_pages.py). On the demo these three strings were 88 of
-- the 441 bytes of an `events` row; a site repeats a few hundred pages over millions of events.
--
-- The rows move to `event_rows` (the partitioned table, its partitions and indexes as they
-- were), and `events` becomes a view that puts the page back, so every reader reads events as
-- before. A query that names none of the page's columns never joins `event_pages` (the join is
-- removed: `page_key` is its primary key). Rows written before this migration keep their
-- strings and no key; the view reads them as they are, and they leave with their day
-- partitions. Writers, erasure and the tiering jobs write `event_rows`.
CREATE TABLE event_pages (
    page_key    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  text NOT NULL,
    digest      uuid NOT NULL,  -- md5 of the three values (event_pages.page_digest)
    url         text,
    title       text,
    path        text,
    UNIQUE (project_id, digest)
);

ALTER TABLE events RENAME TO event_rows;
ALTER TABLE event_rows ADD COLUMN page_key bigint;

CREATE VIEW events AS
SELECT e.project_id, e.ts, e.event_id, e.name, e.type, e.distinct_id, e.user_id,
    e.anonymous_id, e.session_id,
    CASE WHEN e.page_key IS NULL THEN e.path ELSE p.path END AS path,
    CASE WHEN e.page_key IS NULL THEN e.url ELSE p.url END AS url,
    CASE WHEN e.page_key IS NULL THEN e.title ELSE p.title END AS title,
    e.referrer, e.referrer_domain, e.channel, e.utm_source, e.utm_medium, e.utm_campaign,
    e.utm_term, e.utm_content, e.browser, e.browser_version, e.os, e.os_version, e.device_type,
    e.country, e.region, e.city, e.locale, e.is_bot, e.non_interactive, e.properties,
    e.received_at, e.inserted_xid, e.person_key, e.device_key, e.derived_fields
FROM event_rows AS e
LEFT JOIN event_pages AS p ON p.page_key = e.page_key;

-- Day partitions are partitions of `event_rows` now (named `events_YYYYMMDD` as before).
CREATE OR REPLACE FUNCTION ensure_event_partitions(first_day date, days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        part := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF event_rows FOR VALUES FROM (%L) TO (%L)',
                part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
END $$;

-- A writer or eraser of the previous release, during a rolling update, still writes and
-- deletes `events`: rows inserted through the view keep their strings (no page key), and a
-- delete through it deletes the row of the same project, time and event id (unique per
-- project), so neither fails nor loses an event. This release writes `event_rows` directly.
CREATE FUNCTION events_view_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_rows (project_id, ts, event_id, name, type, distinct_id, user_id,
        anonymous_id, session_id, path, url, title, referrer, referrer_domain, channel,
        utm_source, utm_medium, utm_campaign, utm_term, utm_content, browser, browser_version,
        os, os_version, device_type, country, region, city, locale, is_bot, non_interactive,
        properties, received_at, person_key, device_key, derived_fields)
    VALUES (NEW.project_id, NEW.ts, NEW.event_id, NEW.name, NEW.type, NEW.distinct_id,
        NEW.user_id, NEW.anonymous_id, NEW.session_id, NEW.path, NEW.url, NEW.title,
        NEW.referrer, NEW.referrer_domain, NEW.channel, NEW.utm_source, NEW.utm_medium,
        NEW.utm_campaign, NEW.utm_term, NEW.utm_content, NEW.browser, NEW.browser_version,
        NEW.os, NEW.os_version, NEW.device_type, NEW.country, NEW.region, NEW.city, NEW.locale,
        coalesce(NEW.is_bot, false), coalesce(NEW.non_interactive, false), NEW.properties,
        NEW.received_at, NEW.person_key, NEW.device_key, NEW.derived_fields);
    RETURN NEW;
END $$;

CREATE FUNCTION events_view_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_rows
    WHERE project_id = OLD.project_id AND ts = OLD.ts AND event_id = OLD.event_id;
    RETURN OLD;
END $$;

CREATE TRIGGER events_view_insert INSTEAD OF INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_insert();
CREATE TRIGGER events_view_delete INSTEAD OF DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_delete();
