-- Stats rollups (GET /v1/logs/stats): one row per org, level (0 minute, 1 hour, 2 day),
-- bucket start and writer slot, holding the bucket's cells (per route pattern, method and
-- status code: exact counts, largest duration, a sketch of the durations) and, each in its
-- own column, their sums: the total, per route, per method, per status
-- (apitrail_store::logstats::Bucket). A query reads only the column it needs. Each writer adds to rows of its own slot (as
-- request_log_counts), so concurrent writers never wait on each other; queries merge the
-- slots. Written in the same transaction as the request logs they count; the migration's
-- code fills them from the logs already stored (slot 0).
CREATE TABLE request_log_rollups (
    org    bigint   NOT NULL,
    level  smallint NOT NULL,
    bucket bigint   NOT NULL,
    slot   integer  NOT NULL,
    total    bytea    NOT NULL,
    routes   bytea    NOT NULL,
    methods  bytea    NOT NULL,
    statuses bytea    NOT NULL,
    cells    bytea    NOT NULL,
    PRIMARY KEY (org, level, bucket, slot)
);
-- Stored out of line without compression: a query reads every bucket of its range, and
-- decompressing each value (pglz) cost more than the bytes it saved.
ALTER TABLE request_log_rollups
    ALTER COLUMN total SET STORAGE EXTERNAL,
    ALTER COLUMN routes SET STORAGE EXTERNAL,
    ALTER COLUMN methods SET STORAGE EXTERNAL,
    ALTER COLUMN statuses SET STORAGE EXTERNAL,
    ALTER COLUMN cells SET STORAGE EXTERNAL;
