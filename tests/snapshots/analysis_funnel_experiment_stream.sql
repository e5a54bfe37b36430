            SELECT pid, hash(pid) AS h, t, eid, mask, xmask, in_sequence, bd, floor FROM (
                SELECT e.person_id AS pid, epoch_us(e.ts) AS t, e.event_id AS eid,
                       (CASE WHEN (e.name = $1 AND coalesce(e.path = $2, false)) THEN 1 ELSE 0 END) | (CASE WHEN (e.name = $3 AND coalesce(e.path = $4, false)) THEN 2 ELSE 0 END) | (CASE WHEN e.name = $5 THEN 4 ELSE 0 END) | (CASE WHEN e.name = $6 THEN 8 ELSE 0 END) AS mask, 0 AS xmask,
                       true AS in_sequence, NULL::VARCHAR AS bd, f.t_floor AS floor
                FROM events_scan e  LEFT JOIN experiment_exposures f ON f.pid = e.person_id
                WHERE e.ts >= $7 AND e.ts < $8 AND NOT e.is_bot AND e.name IN ($9, $10, $11)
            ) WHERE mask <> 0 OR xmask <> 0
            ORDER BY h, t, CASE WHEN mask & 1 <> 0 THEN 1 WHEN mask & 2 <> 0 THEN 2 WHEN mask & 4 <> 0 THEN 3 WHEN mask & 8 <> 0 THEN 4 ELSE 5 END
