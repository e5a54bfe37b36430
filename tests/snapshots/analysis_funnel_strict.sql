SELECT e.person_id AS pid, epoch_us(e.ts) AS t, CASE WHEN (NOT e.non_interactive AND e.name NOT IN ($7, $8, $9)) THEN (CASE WHEN (e.name = $1 AND coalesce(e.path = $2, false)) THEN 1 ELSE 0 END) | (CASE WHEN e.name = $3 THEN 2 ELSE 0 END) | (CASE WHEN e.name = $4 THEN 4 ELSE 0 END) ELSE 0 END AS mask, (NOT e.non_interactive AND e.name NOT IN ($7, $8, $9)) AS in_sequence
            FROM events_scan e
            WHERE e.ts >= $5 AND e.ts < $6 AND NOT e.is_bot AND (NOT e.non_interactive AND e.name NOT IN ($7, $8, $9));
