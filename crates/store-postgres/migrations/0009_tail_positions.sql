-- Version 9: positions for the live tail (see src/tail.rs and ARCHITECTURE.md).
--
-- Several servers write request logs concurrently, each in group-committed transactions, so
-- neither created_at, nor the id, nor a sequence value alone is an order of visibility: a
-- transaction that took a smaller sequence value may commit after one that took a larger
-- value. Each row records its writing transaction's id (`tail_xid`) and a sequence value
-- (`tail_seq`). A tail reads only rows whose transaction id is below the xmin of its
-- snapshot: every transaction below it has ended, so no row can appear later below that
-- horizon (the transactional-outbox technique). Rows are delivered in (tail_xid, tail_seq)
-- order. The defaults are set after the columns are added so that existing rows are not
-- rewritten (they keep NULL and are never tailed); rows inserted through the partitioned
-- parent (ingest's COPY) take the parent's defaults, and new partitions copy them (LIKE ...
-- INCLUDING DEFAULTS).
CREATE SEQUENCE request_log_tail_seq;
ALTER TABLE request_logs ADD COLUMN tail_xid xid8, ADD COLUMN tail_seq bigint;
ALTER TABLE request_logs
    ALTER COLUMN tail_xid SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN tail_seq SET DEFAULT nextval('request_log_tail_seq');
CREATE INDEX request_logs_by_tail ON request_logs (org, tail_xid, tail_seq);
