WITH asked AS (
    SELECT DISTINCT u.id FROM unnest($2::text[]) AS u(id)
), known AS (  -- one index scan for the array (a semi join with `asked` was planned as a
    -- sequential scan of all the project's keys at every batch while their table was small)
    SELECT k.id, k.key FROM person_keys AS k WHERE k.project_id = $1 AND k.id = ANY($2::text[])
), wanted AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
    FROM asked WHERE id NOT IN (SELECT id FROM known)
), reserved AS (
    INSERT INTO person_key_counters AS c (project_id, next_key)
    SELECT $1, count(*) FROM wanted HAVING count(*) > 0
    ON CONFLICT (project_id) DO UPDATE SET next_key = c.next_key + excluded.next_key
    RETURNING c.next_key - (SELECT count(*) FROM wanted) AS first
), assigned AS (
    INSERT INTO person_keys (project_id, id, key)
    SELECT $1, w.id, r.first + w.n FROM wanted AS w, reserved AS r
    ON CONFLICT (project_id, id) DO NOTHING
    RETURNING id, key
)
SELECT id, key FROM known UNION ALL SELECT id, key FROM assigned
