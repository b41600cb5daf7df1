-- Version 2: status ranges in the default order. The list query seeks each status code of
-- the range in created_at order on this index and merges the runs (see request_logs.rs),
-- as the SQLite backend does with its index of the same shape.
CREATE INDEX request_logs_by_status_created ON request_logs (org, status_code, created_at, id);
