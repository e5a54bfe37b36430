INSERT INTO event_ids (digest)
SELECT d FROM unnest($1::uuid[]) AS d ORDER BY d
ON CONFLICT DO NOTHING
RETURNING digest
