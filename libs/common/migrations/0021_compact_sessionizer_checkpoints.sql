-- Sessionizer checkpoints (services/sessionizer/checkpoints.py) are compressed by the
-- sessionizer itself from now on; stored EXTERNAL, PostgreSQL keeps them out of line without a
-- second compression attempt on every rewrite. Rows written before keep working: the
-- sessionizer still reads uncompressed states.
ALTER TABLE sessionizer_checkpoints ALTER COLUMN state SET STORAGE EXTERNAL;
