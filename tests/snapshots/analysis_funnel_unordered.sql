SELECT e.person_id AS pid, epoch_us(e.ts) AS t, (CASE WHEN e.name = $1 THEN 1 ELSE 0 END) | (CASE WHEN (e.name = $2 AND coalesce(e.path = $3, false)) THEN 2 ELSE 0 END) | (CASE WHEN e.name = $4 THEN 4 ELSE 0 END) AS mask
            FROM events_scan e
            WHERE e.ts >= $5 AND e.ts < $6 AND NOT e.is_bot AND e.name IN ($7, $8) AND ((e.name = $1) OR ((e.name = $2 AND coalesce(e.path = $3, false))) OR (e.name = $4));
