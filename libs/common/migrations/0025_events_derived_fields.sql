-- Values an event row held twice are stored once (measured on the demo: a pageview's
-- properties repeated its path, url, title, referrer and query string in 241 of its bytes,
-- and anonymous_id repeated distinct_id in 24 bytes of nearly every row).
--
-- `derived_fields` says which of them the row leaves out because they equal a column, one
-- bit each (libs/common/model/event_encoding.py writes it):
--   1 properties.path = path      2 properties.url = url      4 properties.title = title
--   8 properties.name = title    16 properties.referrer = referrer
--  32 properties.search = the query string of url (url_search below)
--  64 anonymous_id = distinct_id
-- NULL (rows written before this migration, or nothing left out): the row holds every value.
-- Existing rows stay as they are; every reader goes through the two functions below.
ALTER TABLE events ADD COLUMN derived_fields smallint;

-- The query string of a URL as browsers report it in `location.search`: from the first '?'
-- before any '#' up to the '#', else ''.
CREATE FUNCTION url_search(url text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN strpos(split_part(url, '#', 1), '?') = 0 THEN ''
                ELSE substr(split_part(url, '#', 1), strpos(split_part(url, '#', 1), '?')) END;

-- An event's properties as they were sent.
CREATE FUNCTION event_properties(
    properties jsonb, derived_fields smallint, path text, url text, title text, referrer text
) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN derived_fields IS NULL OR derived_fields & 63 = 0 THEN properties
        ELSE coalesce(properties, '{}'::jsonb) || jsonb_strip_nulls(jsonb_build_object(
            'path', CASE WHEN derived_fields & 1 <> 0 THEN path END,
            'url', CASE WHEN derived_fields & 2 <> 0 THEN url END,
            'title', CASE WHEN derived_fields & 4 <> 0 THEN title END,
            'name', CASE WHEN derived_fields & 8 <> 0 THEN title END,
            'referrer', CASE WHEN derived_fields & 16 <> 0 THEN referrer END,
            'search', CASE WHEN derived_fields & 32 <> 0 THEN url_search(url) END))
        END;

-- An event's anonymous id as it was sent.
CREATE FUNCTION event_anonymous_id(
    anonymous_id text, derived_fields smallint, distinct_id text
) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN derived_fields & 64 <> 0 THEN distinct_id ELSE anonymous_id END;
