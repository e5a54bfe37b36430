-- When tiering last rebuilt an index that writes had left loose (services/tiering/
-- index_compaction.py): its size and its table's rows then, so the next pass rebuilds it only
-- once it has grown well past what its rows need. A row whose index is gone (a dropped day
-- partition) is deleted by the next pass.
CREATE TABLE IF NOT EXISTS index_compactions (
    index_name   text PRIMARY KEY,
    compacted_at timestamptz NOT NULL,
    index_bytes  bigint NOT NULL,
    table_rows   double precision NOT NULL
);
