WITH upserted AS (
    INSERT INTO rollups AS r (project_id, granularity, bucket, name, dim, value, bot, events, visitors)
    SELECT k.project_id, k.granularity, k.bucket, k.name, k.dim, k.value, k.bot, k.events, coalesce(s.visitors, ''::bytea)
    FROM (SELECT (j.e->>0)::text AS project_id, (j.e->>1)::"char" AS granularity, (j.e->>2)::timestamptz AS bucket, (j.e->>3)::text AS name, (j.e->>4)::text AS dim, (j.e->>5)::text AS value, (j.e->>6)::boolean AS bot, (j.e->>7)::bigint AS events, j.ordinality FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS j(e, ordinality)) k
    LEFT JOIN unnest($2::int[], $3::bytea[]) AS s(i, visitors) ON s.i = k.ordinality - 1
    ORDER BY k.ordinality
    ON CONFLICT (project_id, granularity, bucket, name, dim, value, bot) DO UPDATE SET
        events = r.events + excluded.events,
        visitors = CASE WHEN octet_length(excluded.visitors) = 0 THEN r.visitors
                        ELSE excluded.visitors END
    RETURNING xmax = 0 AS created
)
SELECT count(*) FILTER (WHERE created) FROM upserted
