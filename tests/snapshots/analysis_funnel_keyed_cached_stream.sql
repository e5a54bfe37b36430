            SELECT e.alias_key AS ak, e.person_key AS pid, epoch_us(e.ts) AS t, CASE e.name WHEN $3 THEN (CASE WHEN (e.path = $1) THEN 1 ELSE 0 END) | (CASE WHEN (e.path = $2) THEN 2 ELSE 0 END) WHEN $4 THEN 4 WHEN $5 THEN 8 ELSE 0 END AS mask
            FROM events_scan_stored_cached e
            WHERE e.ts >= $6 AND e.ts < $7 AND NOT e.is_bot AND (e.name IN ($8, $9, $10))
