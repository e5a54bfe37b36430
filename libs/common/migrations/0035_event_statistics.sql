-- ANALYZE keeps no statistics of the `event_rows` columns the planner has no use for, and fewer
-- of `session_id` (docs/storage.md, "Statistics of the day partitions"). Each day partition
-- has its own statistics (~55 KB of `pg_statistic` per partition on the demo, 7 MB with the
-- dead copies repeated ANALYZEs leave): a fixed cost per day that a small site pays on every
-- one of its ~90 hot days.
-- - `properties`: filters read it through expressions (`properties ->> 'k'`) or containment,
--   which the planner estimates without the column's statistics; it was the second largest.
-- - `anonymous_id`, `received_at`, `derived_fields`: never filtered on.
-- - the strings the dictionaries replaced (migrations 0029-0031): the `events` view reads them
--   through CASE, so a filter on the view cannot use their statistics; rows written since hold
--   NULL there.
-- - `session_id` and `event_id`: ids nearly unique per row, whose most common values and
--   histogram tell the planner nothing a small sample does not (`n_distinct`); 10 instead of 100.
-- ALTER TABLE on the parent sets it on every partition that exists; `ensure_event_partitions`
-- now copies the parent's targets to each partition it creates (it creates them as separate
-- tables, migration 0032, which attach without the targets).
ALTER TABLE event_rows
    ALTER COLUMN properties SET STATISTICS 0,
    ALTER COLUMN anonymous_id SET STATISTICS 0,
    ALTER COLUMN received_at SET STATISTICS 0,
    ALTER COLUMN derived_fields SET STATISTICS 0,
    ALTER COLUMN path SET STATISTICS 0,
    ALTER COLUMN url SET STATISTICS 0,
    ALTER COLUMN title SET STATISTICS 0,
    ALTER COLUMN referrer SET STATISTICS 0,
    ALTER COLUMN referrer_domain SET STATISTICS 0,
    ALTER COLUMN channel SET STATISTICS 0,
    ALTER COLUMN utm_source SET STATISTICS 0,
    ALTER COLUMN utm_medium SET STATISTICS 0,
    ALTER COLUMN utm_campaign SET STATISTICS 0,
    ALTER COLUMN utm_term SET STATISTICS 0,
    ALTER COLUMN utm_content SET STATISTICS 0,
    ALTER COLUMN browser SET STATISTICS 0,
    ALTER COLUMN browser_version SET STATISTICS 0,
    ALTER COLUMN os SET STATISTICS 0,
    ALTER COLUMN os_version SET STATISTICS 0,
    ALTER COLUMN device_type SET STATISTICS 0,
    ALTER COLUMN locale SET STATISTICS 0,
    ALTER COLUMN session_id SET STATISTICS 10,
    ALTER COLUMN event_id SET STATISTICS 10;

CREATE OR REPLACE FUNCTION ensure_event_partitions(first_day date, days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
    columns text;
    targets text;
BEGIN
    -- Columns ordered for less alignment padding (migration 0032).
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
                 a.attnum),
        string_agg(format('ALTER COLUMN %I SET STATISTICS %s', a.attname, a.attstattarget),
                   ', ' ORDER BY a.attnum) FILTER (WHERE a.attstattarget IS NOT NULL)
    INTO columns, targets
    FROM pg_attribute AS a
    JOIN pg_type AS t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef AS def ON def.adrelid = a.attrelid AND def.adnum = a.attnum
    WHERE a.attrelid = 'event_rows'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
    FOR i IN 0 .. days - 1 LOOP
        d := first_day + i;
        part := 'events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (%s)', part, columns);
            IF targets IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %I %s', part, targets);
            END IF;
            EXECUTE format(
                'ALTER TABLE event_rows ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
END $$;
