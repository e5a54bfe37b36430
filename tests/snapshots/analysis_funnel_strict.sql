SELECT e.person_id AS pid, epoch_us(e.ts) AS t, CASE WHEN (NOT e.non_interactive AND e.name NOT IN ($6, $7, $8)) THEN CASE e.name WHEN $2 THEN (CASE WHEN (e.path = $1) THEN 1 ELSE 0 END) WHEN $3 THEN 6 ELSE 0 END ELSE 0 END AS mask, (NOT e.non_interactive AND e.name NOT IN ($6, $7, $8)) AS in_sequence
            FROM events_scan e
            WHERE e.ts >= $4 AND e.ts < $5 AND NOT e.is_bot AND ((NOT e.non_interactive AND e.name NOT IN ($6, $7, $8)));
