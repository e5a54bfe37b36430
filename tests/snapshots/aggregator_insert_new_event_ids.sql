WITH ids AS (
    SELECT event_id_digest(p, e) AS digest, i
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(p, e, i)
), new_ids AS (
    INSERT INTO event_ids (digest)
    SELECT digest FROM ids ORDER BY digest
    ON CONFLICT DO NOTHING
    RETURNING digest
)
SELECT (ids.i - 1)::int FROM ids JOIN new_ids USING (digest)
