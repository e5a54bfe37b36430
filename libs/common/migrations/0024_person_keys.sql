-- Integer person keys: every id a person is known by (a user id, a device's distinct_id, an
-- alias target) gets a dense bigint per project, so analyses group and sort persons as integers
-- instead of strings (docs/storage.md, "Person keys").
--
-- The aggregator assigns keys before it writes a batch (one statement for the ids it has not
-- seen) and stores two of them on each event: person_key, the key of coalesce(user_id,
-- distinct_id) (the person the event names before aliases), and device_key, the key of
-- distinct_id when that differs (NULL otherwise). An id keeps its key for good: replays and
-- several aggregators get the same key for the same id (ON CONFLICT on the id).
CREATE TABLE IF NOT EXISTS person_keys (
    project_id  text   NOT NULL,
    id          text   NOT NULL,
    key         bigint NOT NULL,
    PRIMARY KEY (project_id, id)
);

-- The next free key per project. Reserving a run of keys locks the project's row until the
-- assigning statement commits; a run whose ids another writer keyed first leaves a gap.
CREATE TABLE IF NOT EXISTS person_key_counters (
    project_id  text   PRIMARY KEY,
    next_key    bigint NOT NULL
);

ALTER TABLE events ADD COLUMN IF NOT EXISTS person_key bigint;
ALTER TABLE events ADD COLUMN IF NOT EXISTS device_key bigint;

-- Backfill: keys for every id already stored, then the hot rows' keys. Rows already in day
-- files keep their files (immutable); the query side reads files without keys by their ids.
-- Run again (it may be), it keys only ids without a key, after the keys already given; the
-- lock (to COMMIT: migrations run in a transaction) keeps aggregators from reserving keys
-- meanwhile.
LOCK TABLE person_key_counters IN EXCLUSIVE MODE;
INSERT INTO person_keys (project_id, id, key)
SELECT ids.project_id, ids.id,
    coalesce(c.next_key, 0) + row_number() OVER (PARTITION BY ids.project_id ORDER BY ids.id) - 1
FROM (
    SELECT project_id, coalesce(user_id, distinct_id) AS id FROM events
    UNION SELECT project_id, distinct_id FROM events
    UNION SELECT project_id, distinct_id FROM person_aliases
    UNION SELECT project_id, person_id FROM person_aliases
) AS ids
LEFT JOIN person_key_counters AS c ON c.project_id = ids.project_id
WHERE NOT EXISTS (
    SELECT 1 FROM person_keys AS k WHERE k.project_id = ids.project_id AND k.id = ids.id
)
ON CONFLICT DO NOTHING;

INSERT INTO person_key_counters (project_id, next_key)
SELECT project_id, max(key) + 1 FROM person_keys GROUP BY project_id
ON CONFLICT (project_id) DO UPDATE SET
    next_key = GREATEST(person_key_counters.next_key, excluded.next_key);

UPDATE events AS e SET
    person_key = p.key,
    device_key = CASE WHEN e.user_id IS NOT NULL AND e.user_id <> e.distinct_id THEN d.key END
FROM person_keys AS p, person_keys AS d
WHERE e.person_key IS NULL
    AND p.project_id = e.project_id AND p.id = coalesce(e.user_id, e.distinct_id)
    AND d.project_id = e.project_id AND d.id = e.distinct_id;
