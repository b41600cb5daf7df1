-- Version 6: the errors (status 400 and up) in duration order, for "the slowest failures".
--
-- A status range sorted by duration could use neither index well under a generic plan: it
-- read every row of the range through the status index of every day and sorted them (83 ms
-- p50 for 5xx at 5M rows, BENCHMARKS.md), or walked every day's duration index filtering on
-- status. This partial index holds only the errors, so it costs ingest in proportion to the
-- error rate, and a list with status_min >= 400 sorted by duration merges its days in order
-- (1.4 ms p50). The list statement states the status bounds as literals, which is what lets
-- the planner prove the index's predicate.
CREATE INDEX request_logs_errors_by_duration ON request_logs (org, duration_ms, id)
    WHERE status_code >= 400;
