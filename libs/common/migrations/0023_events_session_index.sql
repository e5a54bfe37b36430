-- `events` loses its (project_id, session_id) index, a third of what the events' indexes cost
-- (about 38 bytes per stored event on the demo). A session's events all carry its person's
-- distinct_id (the sessionizer assigns sessions per distinct_id), so its readers (a session's
-- events; the events list filtered by session) find them through (project_id, distinct_id,
-- ts) with the session's distinct_id and span from `sessions`.
DROP INDEX IF EXISTS events_project_session;
