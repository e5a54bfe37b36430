SELECT e.person_id AS pid, epoch_us(e.ts) AS t, CASE e.name WHEN $1 THEN 1 WHEN $3 THEN 4 | (CASE WHEN (e.path = $2) THEN 2 ELSE 0 END) ELSE 0 END AS mask
            FROM events_scan e
            WHERE e.ts >= $4 AND e.ts < $5 AND NOT e.is_bot AND (e.name IN ($6, $7));
