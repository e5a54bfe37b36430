SELECT (k.ordinality - 1)::int, r.visitors FROM (SELECT (j.e->>0)::text AS project_id, (j.e->>1)::"char" AS granularity, (j.e->>2)::timestamptz AS bucket, (j.e->>3)::text AS name, (j.e->>4)::text AS dim, (j.e->>5)::text AS value, (j.e->>6)::boolean AS bot, (j.e->>7)::bigint AS events, j.ordinality FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS j(e, ordinality)) k JOIN rollups r ON r.project_id = k.project_id AND r.granularity = k.granularity AND r.bucket = k.bucket AND r.name = k.name AND r.dim = k.dim AND r.value = k.value AND r.bot = k.bot
ORDER BY k.ordinality
FOR UPDATE OF r
