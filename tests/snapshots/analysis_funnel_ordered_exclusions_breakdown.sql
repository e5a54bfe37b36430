SELECT e.person_id AS pid, epoch_us(e.ts) AS t, CASE e.name WHEN $2 THEN (CASE WHEN (e.path = $1) THEN 1 ELSE 0 END) WHEN $3 THEN 2 WHEN $4 THEN 4 ELSE 0 END AS mask, (CASE WHEN e.name = $5 THEN 1 ELSE 0 END) AS xmask, coalesce(nullif(json_extract_string(pt.traits, $6), ''), '(none)') AS bd
            FROM events_scan e LEFT JOIN persons pt ON pt.person_id = e.person_id
            WHERE e.ts >= $7 AND e.ts < $8 AND NOT e.is_bot AND ((e.name IN ($3, $4) OR (e.name = $2 AND (((e.path = $1))))) OR (e.name = $5));

CREATE OR REPLACE TEMP TABLE funnel_persons AS SELECT * FROM funnel_persons_arrow;

SELECT bd, count(*) FILTER (WHERE reached >= 1) AS c1, count(*) FILTER (WHERE reached >= 2) AS c2, median((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS m2, avg((t2 - t1) / 1e6) FILTER (WHERE reached >= 2) AS a2, count(*) FILTER (WHERE reached >= 3) AS c3, median((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS m3, avg((t3 - t2) / 1e6) FILTER (WHERE reached >= 3) AS a3 FROM funnel_persons GROUP BY bd ORDER BY c1 DESC, bd;
