CREATE OR REPLACE TEMP TABLE retention_cohorts AS
                SELECT DISTINCT x.pid, m.idx
                FROM (SELECT DISTINCT pid, epoch_us(ts) // 3600000000 AS b FROM (
        SELECT e.person_id AS pid, e.ts FROM events_scan e
        WHERE e.ts >= $1 AND e.ts < $2 AND NOT e.is_bot AND e.ts < $3
          AND e.name = $4)) x
                JOIN retention_periods m ON m.b = x.b;

CREATE OR REPLACE TEMP TABLE retention_returns AS
                SELECT DISTINCT x.pid, m.idx
                FROM (SELECT DISTINCT pid, epoch_us(ts) // 3600000000 AS b FROM (
        SELECT e.person_id AS pid, e.ts FROM events_scan e
        WHERE e.ts >= $1 AND e.ts < $2 AND NOT e.is_bot AND e.ts < $3
          AND e.name = $4)) x
                JOIN retention_periods m ON m.b = x.b;

SELECT idx, count(*) FROM retention_cohorts GROUP BY idx;

SELECT cohort, k, count(*) FROM (
        SELECT c.pid, c.idx AS cohort, r.idx - c.idx AS k
        FROM retention_cohorts c JOIN retention_returns r
          ON r.pid = c.pid AND r.idx > c.idx AND r.idx <= c.idx + 3
        ) GROUP BY cohort, k;

DROP TABLE retention_cohorts;

DROP TABLE retention_returns;
