SELECT e.person_id AS sid, e.person_id AS pid, epoch_us(e.ts) AS t, e.event_id AS eid,
                   CASE WHEN e.name = $3 THEN CASE WHEN coalesce(e.path, '') = '' THEN '(none)' ELSE coalesce(nullif(rtrim(regexp_replace(coalesce(nullif(rtrim(e.path, '/'), ''), '/'), $1, $2, 'g'), '/'), ''), '/') END ELSE e.name END AS label
            FROM events_scan e
            WHERE e.ts >= $4 AND e.ts < $5 AND NOT e.is_bot AND e.ts < $6 AND NOT e.non_interactive AND (e.name = $7);

SELECT coalesce(nullif(rtrim(regexp_replace(coalesce(nullif(rtrim($1, '/'), ''), '/'), $2, $3, 'g'), '/'), ''), '/'), coalesce(nullif(rtrim(regexp_replace(coalesce(nullif(rtrim($4, '/'), ''), '/'), $5, $6, 'g'), '/'), ''), '/');
