-- Query API: journeys resolve a person's device ids from person_aliases in both directions;
-- the primary key serves distinct_id -> person, this index serves person -> distinct ids.
CREATE INDEX IF NOT EXISTS person_aliases_person ON person_aliases (project_id, person_id);
