-- Stats rollups (GET /v1/logs/stats): one row per org, level (0 minute, 1 hour, 2 day),
-- bucket start and writer slot, holding the bucket's cells (per route pattern, method and
-- status code: exact counts, largest duration, a sketch of the durations) and, apart, their
-- sums (the total, per route, per method, per status), encoded by
-- apitrail_store::logstats::Bucket; a query without filters reads only `sums`. Each writer adds to rows of its own slot (as
-- request_log_counts), so concurrent writers never wait on each other; queries merge the
-- slots. Written in the same transaction as the request logs they count; the migration's
-- code fills them from the logs already stored (slot 0).
CREATE TABLE request_log_rollups (
    org    bigint   NOT NULL,
    level  smallint NOT NULL,
    bucket bigint   NOT NULL,
    slot   integer  NOT NULL,
    sums   bytea    NOT NULL,
    cells  bytea    NOT NULL,
    PRIMARY KEY (org, level, bucket, slot)
);
