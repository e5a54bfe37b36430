SELECT e.person_id AS sid, epoch_us(e.ts) AS t, e.event_id AS eid, CASE WHEN e.name = $1 THEN e.path ELSE e.name END AS raw, (e.name = $1)::UTINYINT AS page
                FROM events_scan e
                WHERE e.ts >= $2 AND e.ts < $3 AND NOT e.is_bot AND e.ts < $4 AND NOT e.non_interactive AND (e.name = $5);

SELECT CASE WHEN e.name = $3 THEN CASE WHEN coalesce(e.path, '') = '' THEN '(none)' ELSE coalesce(nullif(rtrim(regexp_replace(coalesce(nullif(rtrim(e.path, '/'), ''), '/'), $1, $2, 'g'), '/'), ''), '/') END ELSE e.name END FROM strata_path_labels e ORDER BY i;

SELECT coalesce(nullif(rtrim(regexp_replace(coalesce(nullif(rtrim($1, '/'), ''), '/'), $2, $3, 'g'), '/'), ''), '/'), coalesce(nullif(rtrim(regexp_replace(coalesce(nullif(rtrim($4, '/'), ''), '/'), $5, $6, 'g'), '/'), ''), '/');
