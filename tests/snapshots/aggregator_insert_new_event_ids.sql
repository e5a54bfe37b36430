WITH inserted AS (
    INSERT INTO event_ids (digest)
    SELECT d FROM unnest($1::uuid[]) AS d ORDER BY d
    ON CONFLICT DO NOTHING
    RETURNING digest
)
SELECT count(*)::int,
    CASE WHEN count(*) < cardinality($1::uuid[])
        THEN coalesce(array_agg(digest), '{}') END
FROM inserted
