-- Version 7: positions for the live tail (see src/tail.rs and ARCHITECTURE.md).
--
-- Every request log stored from now on gets `tail_pos`, the next value of one counter per
-- database, taken in the writing transaction. SQLite lets one transaction write at a time
-- (across processes too), so positions are handed out in commit order: a reader that has seen
-- position n will never see a new row at or below n. The rowid is not enough: SQLite reuses
-- the largest rowid after that row is deleted, and rows will move between time partitions
-- (issue 18), so the position is a value of its own, not a row's address.
ALTER TABLE request_logs ADD COLUMN tail_pos INTEGER;
CREATE INDEX request_logs_by_tail ON request_logs (org, tail_pos) WHERE tail_pos IS NOT NULL;

-- The last position handed out, per kind of record (0: request logs). Audit entries need
-- none: each org's chain position is already handed out by the same single writer.
CREATE TABLE tail_counters (
    kind INTEGER PRIMARY KEY,
    last INTEGER NOT NULL
);
INSERT INTO tail_counters (kind, last) VALUES (0, 0);
