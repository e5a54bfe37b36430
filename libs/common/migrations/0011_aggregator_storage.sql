-- Aggregator write path (docs/storage.md, "Write path"): storage parameters of the tables it
-- updates in place on every batch. Nothing is rewritten: they apply to rows written from now on.

-- A visitors sketch past its small modes is 4 KB of near-random registers. Stored EXTERNAL it
-- lives out of line and uncompressed: an update of `events` alone copies an 18-byte pointer,
-- not the sketch, and a changed sketch is written without a pglz attempt (compressing it on
-- every rewrite cost more than the rest of the row's update).
ALTER TABLE rollups ALTER COLUMN visitors SET STORAGE EXTERNAL;

-- Room on each page for the new versions of rows updated in place, so the updates stay HOT
-- (no index entries, pruned on the page) instead of moving rows and growing the indexes.
ALTER TABLE rollups SET (fillfactor = 70);
ALTER TABLE session_rollups SET (fillfactor = 70);
ALTER TABLE sessions SET (fillfactor = 85);
