-- Two of the three B-tree indexes of `events` cost more than the rows they find (measured on the
-- demo, bytes per stored event):
--
-- - (project_id, session_id), 32-38: dropped. A session's events all carry its person's
--   distinct_id (the sessionizer assigns sessions per distinct_id), so its readers (a session's
--   events; the events list filtered by session) find them through the person's index with the
--   session's distinct_id and span from `sessions`.
-- - (project_id, distinct_id, ts), 87: rebuilt without ts. Every entry with ts was unique; without
--   it a person's entries share one key, which B-tree deduplication stores once with a list of
--   row pointers. Its readers filter a person's few rows by time after the index.
--
-- Building the index locks writes to `events` while it runs (a partitioned index cannot be built
-- concurrently): seconds on a laptop, minutes on a large hot store, so migrate in a quiet hour.
DROP INDEX IF EXISTS events_project_session;
DROP INDEX IF EXISTS events_project_distinct;
CREATE INDEX events_project_distinct ON events (project_id, distinct_id);
