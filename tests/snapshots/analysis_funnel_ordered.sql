SELECT pid, hash(pid) AS h, t, eid, mask, xmask, in_sequence, bd, floor FROM (
                SELECT e.person_id AS pid, epoch_us(e.ts) AS t, e.event_id AS eid,
                       (CASE WHEN (e.name = $1 AND coalesce(e.path = $2, false)) THEN 1 ELSE 0 END) | (CASE WHEN (e.name = $3 AND coalesce(e.path = $4, false)) THEN 2 ELSE 0 END) | (CASE WHEN e.name = $5 THEN 4 ELSE 0 END) | (CASE WHEN e.name = $6 THEN 8 ELSE 0 END) AS mask, 0 AS xmask,
                       true AS in_sequence, NULL::VARCHAR AS bd, NULL::BIGINT AS floor
                FROM events_scan e
                WHERE e.ts >= $7 AND e.ts < $8 AND NOT e.is_bot AND e.name IN ($9, $10, $11)
            ) WHERE mask <> 0 OR xmask <> 0
            ORDER BY h, t, CASE WHEN mask & 1 <> 0 THEN 1 WHEN mask & 2 <> 0 THEN 2 WHEN mask & 4 <> 0 THEN 3 WHEN mask & 8 <> 0 THEN 4 ELSE 5 END;

CREATE OR REPLACE TEMP TABLE funnel_persons AS SELECT * FROM funnel_persons_arrow;

SELECT NULL AS bd, count(*) FILTER (WHERE reached >= 1) AS c1, count(*) FILTER (WHERE reached >= 2) AS c2, median((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS m2, avg((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS a2, count(*) FILTER (WHERE reached >= 3) AS c3, median((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS m3, avg((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS a3, count(*) FILTER (WHERE reached >= 4) AS c4, median((t4 - t3) / 1e6) FILTER (WHERE reached >= 4) AS m4, avg((t4 - t3) / 1e6) FILTER (WHERE reached >= 4) AS a4 FROM funnel_persons;

SELECT count(*), avg((t4 - t1) / 1e6), median((t4 - t1) / 1e6), min((t4 - t1) / 1e6), max((t4 - t1) / 1e6) FROM funnel_persons WHERE reached >= 4;
