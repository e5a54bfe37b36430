-- New day partitions of `event_rows` lay their columns out for less alignment padding: the
-- 8-byte columns first, then the 2- and 1-byte ones, then the variable-length ones (text, jsonb),
-- each group in the parent's order (docs/storage.md, "Column order of the day partitions").
--
-- The parent's order is the order columns were added in: `ts` (8-byte aligned) after the
-- 5-byte `project_id`, `received_at` after the variable-length `properties` and `page_key`
-- after the 2-byte `derived_fields` each cost up to 7 bytes of padding. A partition may order
-- its columns differently from its parent; rows written through the parent are routed by column
-- name, and readers of the parent or the `events` view see the parent's order. Measured on the
-- demo: 265 -> 252 bytes per row.
--
-- The order is read from the catalog when the partition is created, so a column a later
-- migration adds to `event_rows` lands in its group without a change here. Partitions that
-- exist keep their layout (nothing is rewritten); ATTACH on an empty table checks nothing and
-- creates the partition's indexes from the parent's, as PARTITION OF did.
CREATE OR REPLACE FUNCTION ensure_event_partitions(first_day date, days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
    columns text;
BEGIN
    SELECT string_agg(
        format('%I %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
            CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
            CASE WHEN def.adbin IS NULL THEN ''
                 ELSE ' DEFAULT ' || pg_get_expr(def.adbin, def.adrelid) END),
        ', '
        ORDER BY CASE WHEN t.typlen = -1 THEN 4
                      WHEN t.typalign = 'd' THEN 0
                      WHEN t.typalign = 'i' THEN 1
                      WHEN t.typalign = 's' THEN 2
                      ELSE 3 END,
                 a.attnum)
    INTO columns
    FROM pg_attribute AS a
    JOIN pg_type AS t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef AS def ON def.adrelid = a.attrelid AND def.adnum = a.attnum
    WHERE a.attrelid = 'event_rows'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        part := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (%s)', part, columns);
            EXECUTE format(
                'ALTER TABLE event_rows ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
END $$;
