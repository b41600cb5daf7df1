-- Stats rollups (GET /v1/logs/stats): per org, level (0 minute, 1 hour, 2 day), bucket start
-- and the bounded dimensions, the exact count, how many had a duration, the largest duration
-- (-1 for none) and a sketch of the durations (apitrail_store::logstats::Sketch). Each
-- writer adds to cells of its own slot (as request_log_counts), so concurrent writers never
-- wait on each other's rows; queries merge the slots. Written in the same transaction as the
-- request logs they count; the migration's code fills them from the logs already stored
-- (slot 0). route_pattern is '' for logs without one.
CREATE TABLE request_log_rollups (
    org           bigint   NOT NULL,
    level         smallint NOT NULL,
    bucket        bigint   NOT NULL,
    route_pattern text COLLATE "C" NOT NULL,
    method        text COLLATE "C" NOT NULL,
    status_code   integer  NOT NULL,
    slot          integer  NOT NULL,
    n             bigint   NOT NULL,
    timed         bigint   NOT NULL,
    max_ms        bigint   NOT NULL,
    sketch        bytea    NOT NULL,
    PRIMARY KEY (org, level, bucket, route_pattern, method, status_code, slot)
);
