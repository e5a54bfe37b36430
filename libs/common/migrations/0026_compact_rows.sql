-- Rows packed tighter (docs/storage.md, "Footprint"). Nothing is rewritten: the storage
-- parameters apply to pages filled from now on, and the functions serve every reader.

-- Less room kept on each page for in-place updates (migration 0011 kept 30 % of every rollup
-- page, 15 % of every session page, when a sketch was 4 KB; rows are ~130 bytes now). Only
-- the rows of the current hour and day are updated again and again; every older page kept
-- its room empty for good. A session's row is updated only while the session goes on: its
-- pages are filled. The rollups keep 15 %: at 100 their live rows, rewritten by every batch,
-- moved off their pages and the table grew several-fold (docs/storage.md); `session_rollups`,
-- updated the same way, the same.
ALTER TABLE rollups SET (fillfactor = 85);
ALTER TABLE session_rollups SET (fillfactor = 85);
ALTER TABLE sessions SET (fillfactor = 100);

-- A pageview's `referrer` property that is the previous page of the site is stored relative
-- to the page's origin, with bit 128 of `derived_fields` (libs/common/model/event_encoding.py):
-- the property holds '/pricing' for 'https://shop.example/pricing' on a page of
-- 'https://shop.example'. Bits 1-64 as migration 0025 set them.

-- A URL's scheme and authority ('https://shop.example:8443'), NULL when it has none.
CREATE FUNCTION url_origin(url text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN substring(url from '^[^:/?#]+://[^/?#]*');

-- An event's properties as they were sent (migration 0025's, and the relative referrer).
CREATE OR REPLACE FUNCTION event_properties(
    properties jsonb, derived_fields smallint, path text, url text, title text, referrer text
) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN derived_fields IS NULL OR derived_fields & 191 = 0 THEN properties
        ELSE coalesce(properties, '{}'::jsonb) || jsonb_strip_nulls(jsonb_build_object(
            'path', CASE WHEN derived_fields & 1 <> 0 THEN path END,
            'url', CASE WHEN derived_fields & 2 <> 0 THEN url END,
            'title', CASE WHEN derived_fields & 4 <> 0 THEN title END,
            'name', CASE WHEN derived_fields & 8 <> 0 THEN title END,
            'referrer', CASE WHEN derived_fields & 16 <> 0 THEN referrer
                             WHEN derived_fields & 128 <> 0
                             THEN url_origin(url) || (properties ->> 'referrer') END,
            'search', CASE WHEN derived_fields & 32 <> 0 THEN url_search(url) END))
        END;
