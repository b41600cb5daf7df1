-- Stats rollups (GET /v1/logs/stats): one row per org, level (0 minute, 1 hour, 2 day) and
-- bucket start, holding the bucket's cells (per route pattern, method and status code: exact
-- counts, largest duration, a sketch of the durations) and, apart, their sums (the total, per
-- route, per method, per status), encoded by apitrail_store::logstats::Bucket; a query
-- without filters reads only `sums` (`cells` comes last, so its overflow pages are not read). Written in the same transaction as the request logs
-- they count; the migration's code fills them from the logs already stored.
CREATE TABLE request_log_rollups (
    org    INTEGER NOT NULL,
    level  INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    sums   BLOB    NOT NULL,
    cells  BLOB    NOT NULL,
    PRIMARY KEY (org, level, bucket)
) WITHOUT ROWID;
