-- Stats rollups (GET /v1/logs/stats): per org, level (0 minute, 1 hour, 2 day), bucket start
-- and the bounded dimensions, the exact count, how many had a duration, the largest duration
-- (-1 for none) and a sketch of the durations (apitrail_store::logstats::Sketch). Written in
-- the same transaction as the request logs they count; the migration's code fills them from
-- the logs already stored. route_pattern is '' for logs without one.
CREATE TABLE request_log_rollups (
    org           INTEGER NOT NULL,
    level         INTEGER NOT NULL,
    bucket        INTEGER NOT NULL,
    route_pattern TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    status_code   INTEGER NOT NULL,
    n             INTEGER NOT NULL,
    timed         INTEGER NOT NULL,
    max_ms        INTEGER NOT NULL,
    sketch        BLOB    NOT NULL,
    PRIMARY KEY (org, level, bucket, route_pattern, method, status_code)
) WITHOUT ROWID;
