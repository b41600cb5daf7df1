-- Version 3: request logs partitioned by day (UTC) of created_at, and a claim table for the
-- ids clients supply.
--
-- Each partition holds one UTC day, [day * 86400000, (day + 1) * 86400000) in Unix ms, and is
-- named request_logs_YYYYMMDD. Partitions are made by apitrail_request_log_partition (below):
-- a few days ahead at start-up and by the store's maintenance task, and on demand, before
-- the write transaction, for records of any other day. There is no default partition.
-- Retention drops whole partitions.
--
-- A partitioned table's unique indexes must contain the partition key, so (org, id) alone
-- cannot be unique any more. Ids the server mints (UUIDv7, for records sent without one)
-- cannot repeat a stored id; ids clients send can, and are claimed in request_log_ids
-- (primary key (org, id)) before their record is written: only a newly claimed id's record
-- is stored. Claims are removed with their records by retention.

ALTER TABLE request_logs RENAME TO request_logs_v2;

CREATE TABLE request_logs (
    org                     bigint  NOT NULL,
    id                      uuid    NOT NULL,
    created_at              bigint  NOT NULL,
    -- -1 when unknown, so that the column is a total order for keyset paging.
    duration_ms             bigint  NOT NULL,
    status_code             integer NOT NULL,
    method                  text COLLATE "C" NOT NULL,
    path                    text    NOT NULL,
    route_pattern           text COLLATE "C",
    request_id              text COLLATE "C",
    auth_type               text COLLATE "C",
    error_code              text,
    query                   text,
    started_at              bigint,
    completed_at            bigint,
    client_ip               text,
    user_agent              text,
    origin                  text,
    principal_type          text,
    principal_id            text,
    user_id                 text COLLATE "C",
    email                   text COLLATE "C",
    api_key_id              text COLLATE "C",
    service_account_id      text COLLATE "C",
    price                   text,
    minutes                 bigint,
    seconds                 bigint,
    stripe_invoice_item_id  text,
    request_body_truncated  boolean NOT NULL DEFAULT false,
    response_body_truncated boolean NOT NULL DEFAULT false,
    metadata                text,
    request_body            text,
    response_body           text
) PARTITION BY RANGE (created_at);

-- Makes the partition of UTC day `day` (days since 1970-01-01) unless it exists. Safe to
-- call from several servers at once: callers of the same day are serialized by an advisory
-- transaction lock and the second finds the table made. The table is created on its own and
-- then attached, because ATTACH PARTITION locks the parent in SHARE UPDATE EXCLUSIVE mode
-- (reads and inserts go on) where CREATE TABLE ... PARTITION OF would lock it exclusively.
CREATE FUNCTION apitrail_request_log_partition(day bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'request_logs_'
        || to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD');
    lo bigint := day * 86400000;
BEGIN
    -- The checks read the catalog with a query (a fresh snapshot per statement) rather
    -- than to_regclass, whose cached lookups may not yet see another session's commit.
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE c.relname = part AND c.relnamespace = current_schema()::regnamespace) THEN
        RETURN;
    END IF;
    -- 0x61707472 ("aptr"): apitrail's partition locks, one per day.
    PERFORM pg_advisory_xact_lock(1634759794, day::integer);
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE c.relname = part AND c.relnamespace = current_schema()::regnamespace) THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I (LIKE request_logs INCLUDING DEFAULTS)', part);
    EXECUTE format('ALTER TABLE request_logs ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                   part, lo, lo + 86400000);
END
$$;

SELECT apitrail_request_log_partition(d)
  FROM (SELECT DISTINCT floor(created_at / 86400000.0)::bigint AS d FROM request_logs_v2) days;

INSERT INTO request_logs SELECT * FROM request_logs_v2;

-- Which ids of the existing rows came from clients is not recorded, so all are claimed.
CREATE TABLE request_log_ids (
    org        bigint NOT NULL,
    id         uuid   NOT NULL,
    -- The stored record's created_at: retention removes the claim with the record.
    created_at bigint NOT NULL,
    PRIMARY KEY (org, id)
);
INSERT INTO request_log_ids (org, id, created_at) SELECT org, id, created_at FROM request_logs_v2;
CREATE INDEX request_log_ids_by_created ON request_log_ids (org, created_at);

-- Exact counts without scanning the org's days: how many of an org's logs of a day are
-- stored, split over a few slots so that concurrent writers add to rows of their own (a
-- writer's group adds to its slot; deletions subtract in slot 0). A count sums the org's
-- rows. Kept in the same transactions as the rows they count; a dropped day's rows go with it.
CREATE TABLE request_log_counts (
    org  bigint  NOT NULL,
    day  bigint  NOT NULL,
    slot integer NOT NULL,
    n    bigint  NOT NULL,
    PRIMARY KEY (org, day, slot)
);
INSERT INTO request_log_counts (org, day, slot, n)
SELECT org, floor(created_at / 86400000.0)::bigint, 0, count(*)
  FROM request_logs_v2 GROUP BY 1, 2;

DROP TABLE request_logs_v2;

-- The indexes of version 2, now one per partition (made on each partition as it is
-- attached). The primary key needs the partition key; it also serves get by id.
ALTER TABLE request_logs ADD PRIMARY KEY (org, id, created_at);
CREATE INDEX request_logs_by_created ON request_logs (org, created_at, id);
CREATE INDEX request_logs_by_duration ON request_logs (org, duration_ms, id);
CREATE INDEX request_logs_by_status ON request_logs (org, status_code, id);
CREATE INDEX request_logs_by_method ON request_logs (org, method, created_at, id);
CREATE INDEX request_logs_by_route ON request_logs (org, route_pattern, created_at, id);
CREATE INDEX request_logs_by_auth_type ON request_logs (org, auth_type, created_at, id);
CREATE INDEX request_logs_by_request_id ON request_logs (org, request_id);
CREATE INDEX request_logs_by_user ON request_logs (org, user_id, created_at, id)
    WHERE user_id IS NOT NULL;
CREATE INDEX request_logs_by_api_key ON request_logs (org, api_key_id, created_at, id)
    WHERE api_key_id IS NOT NULL;
CREATE INDEX request_logs_by_status_created ON request_logs (org, status_code, created_at, id);
