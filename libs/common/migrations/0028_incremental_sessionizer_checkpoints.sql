-- Sessionizer checkpoints become incremental (services/sessionizer/checkpoints.py): the
-- partition's row keeps its whole state as of its last rewrite, and each checkpoint in between
-- adds a row of only the persons changed since the one before, numbered 1, 2, ... in `changes`.
-- The partition row's `changes` says how many of them belong to its state, so a row written by
-- the previous release (changes = 0) is read as it was, and the sequence number and the state
-- still agree within one transaction. Stored EXTERNAL like the state: the sessionizer
-- compresses them itself.
-- The state column is renamed `base_state`, so a sessionizer of the previous release fails to
-- read a checkpoint (and retries) instead of resuming from the base alone, without the changes
-- stored since, if one is ever rolled back across this migration.
ALTER TABLE sessionizer_checkpoints RENAME COLUMN state TO base_state;
ALTER TABLE sessionizer_checkpoints ADD COLUMN changes integer NOT NULL DEFAULT 0;

CREATE TABLE sessionizer_checkpoint_changes (
    stream       text NOT NULL,
    partition    integer NOT NULL,
    change       integer NOT NULL,
    persons      bytea NOT NULL,
    PRIMARY KEY (stream, partition, change)
);
ALTER TABLE sessionizer_checkpoint_changes ALTER COLUMN persons SET STORAGE EXTERNAL;
