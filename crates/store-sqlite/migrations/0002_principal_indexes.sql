-- The principal filters of the zoo and keys dialects (`/user/api-calls`, `/users/{id}/api-calls`,
-- `apiKeyId`), each followed by the default order like the other equality filters, so a user or
-- key with few calls is found without walking the org's whole history. Partial: logs without
-- the value (unauthenticated calls) cost nothing. Each index costs ingest (about 10% each at
-- 1M rows, BENCHMARKS.md), so `serviceAccountId` and the email of `/users/{email}/api-calls`
-- are not indexed: they walk the org's created_at order and test each row.
CREATE INDEX request_logs_by_user ON request_logs (org, user_id, created_at, id)
    WHERE user_id IS NOT NULL;
CREATE INDEX request_logs_by_api_key ON request_logs (org, api_key_id, created_at, id)
    WHERE api_key_id IS NOT NULL;
