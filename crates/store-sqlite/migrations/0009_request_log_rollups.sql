-- Stats rollups (GET /v1/logs/stats): one row per org, level (0 minute, 1 hour, 2 day) and
-- bucket start, holding the bucket's cells (per route pattern, method and status code: exact
-- counts, largest duration, a sketch of the durations) and, each in its own column, their
-- sums: the total, per route, per method, per status (apitrail_store::logstats::Bucket). A
-- query reads only the column it needs (a query without filters never touches `cells`). Written in the same transaction as the request logs
-- they count; the migration's code fills them from the logs already stored.
CREATE TABLE request_log_rollups (
    org    INTEGER NOT NULL,
    level  INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    total    BLOB    NOT NULL,
    routes   BLOB    NOT NULL,
    methods  BLOB    NOT NULL,
    statuses BLOB    NOT NULL,
    cells    BLOB    NOT NULL,
    PRIMARY KEY (org, level, bucket)
) WITHOUT ROWID;
