SELECT e.session_id AS sid, hash(e.session_id) AS sh, e.person_id AS pid, epoch_us(e.ts) AS t, e.event_id AS eid, CASE WHEN e.name = $1 THEN e.path ELSE e.name END AS raw, (e.name = $1)::UTINYINT AS page
                FROM events_scan e
                WHERE e.ts >= $2 AND e.ts < $3 AND NOT e.is_bot AND e.session_id IS NOT NULL AND NOT e.non_interactive AND (e.name = $4 OR NOT starts_with(e.name, '$'));
