SELECT pid, hash(pid) AS h, t, eid, mask, xmask, in_sequence, bd, floor FROM (
                SELECT e.person_id AS pid, epoch_us(e.ts) AS t, e.event_id AS eid,
                       (CASE WHEN (e.name = $1 AND coalesce(e.path = $2, false)) THEN 1 ELSE 0 END) | (CASE WHEN e.name = $3 THEN 2 ELSE 0 END) | (CASE WHEN e.name = $4 THEN 4 ELSE 0 END) AS mask, (CASE WHEN e.name = $5 THEN 1 ELSE 0 END) AS xmask,
                       true AS in_sequence, coalesce(nullif(json_extract_string(pt.traits, $6), ''), '(none)') AS bd, NULL::BIGINT AS floor
                FROM events_scan e LEFT JOIN persons pt ON pt.person_id = e.person_id
                WHERE e.ts >= $7 AND e.ts < $8 AND NOT e.is_bot AND e.name IN ($9, $10, $11, $12)
            ) WHERE mask <> 0 OR xmask <> 0
            ORDER BY h, t, CASE WHEN mask & 1 <> 0 THEN 1 WHEN mask & 2 <> 0 THEN 2 WHEN mask & 4 <> 0 THEN 3 ELSE 4 END;

CREATE OR REPLACE TEMP TABLE funnel_persons AS SELECT * FROM funnel_persons_arrow;

SELECT NULL AS bd, count(*) FILTER (WHERE reached >= 1) AS c1, count(*) FILTER (WHERE reached >= 2) AS c2, median((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS m2, avg((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS a2, count(*) FILTER (WHERE reached >= 3) AS c3, median((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS m3, avg((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS a3 FROM funnel_persons;

SELECT bd, count(*) FILTER (WHERE reached >= 1) AS c1, count(*) FILTER (WHERE reached >= 2) AS c2, median((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS m2, avg((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS a2, count(*) FILTER (WHERE reached >= 3) AS c3, median((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS m3, avg((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS a3 FROM funnel_persons GROUP BY bd ORDER BY c1 DESC, bd;

SELECT count(*), avg((t3 - t1) / 1e6), median((t3 - t1) / 1e6), min((t3 - t1) / 1e6), max((t3 - t1) / 1e6) FROM funnel_persons WHERE reached >= 3;
