-- The aggregator's dedup table keeps, per event id it has stored, a 128-bit digest of
-- (project, event id) instead of the two strings: a fixed 16-byte key whatever the SDK's ids
-- look like (UUID strings made it ~215 bytes per event with its index; ~90 now). A collision
-- needs ~2^64 ids within the dedup horizon, so no genuine event is dropped as a repeat.
-- received_at stays: pruning past the horizon reads it.

-- One definition of the digest, used by the aggregator's insert and by this migration. The
-- length prefix keeps (project, id) pairs apart whatever characters either holds.
CREATE FUNCTION event_id_digest(project_id text, event_id text) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN md5(length(project_id) || ':' || project_id || event_id)::uuid;

CREATE TABLE event_id_digests (
    digest       uuid PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO event_id_digests (digest, received_at)
SELECT event_id_digest(project_id, event_id), received_at FROM event_ids
ON CONFLICT DO NOTHING;
DROP TABLE event_ids;
ALTER TABLE event_id_digests RENAME TO event_ids;
ALTER INDEX event_id_digests_pkey RENAME TO event_ids_pkey;
