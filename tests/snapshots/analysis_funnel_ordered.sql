SELECT e.person_id AS pid, epoch_us(e.ts) AS t, (CASE WHEN (e.name = $1 AND coalesce(e.path = $2, false)) THEN 1 ELSE 0 END) | (CASE WHEN (e.name = $3 AND coalesce(e.path = $4, false)) THEN 2 ELSE 0 END) | (CASE WHEN e.name = $5 THEN 4 ELSE 0 END) | (CASE WHEN e.name = $6 THEN 8 ELSE 0 END) AS mask
            FROM events_scan e
            WHERE e.ts >= $7 AND e.ts < $8 AND NOT e.is_bot AND e.name IN ($9, $10, $11) AND (((e.name = $1 AND coalesce(e.path = $2, false))) OR ((e.name = $3 AND coalesce(e.path = $4, false))) OR (e.name = $5) OR (e.name = $6));
