-- Which API key ids, service account ids and emails each org's request logs hold.
--
-- `serviceAccountId` and the email of `/users/{email}/api-calls` are not indexed (0002), so
-- a filter on one with no calls walked the org's whole history to find nothing (368 ms at
-- 1M rows). The list checks this table first and answers such a filter at once. Rows are
-- added in the transaction that stores the records holding them and never removed, so the
-- table may name a value no record has any more, but never misses one that some record has.
-- The fields are numbered as in the PostgreSQL store: 2 api_key_id, 3 service_account_id,
-- 4 email.
CREATE TABLE request_log_values (
    org   INTEGER NOT NULL,
    field INTEGER NOT NULL,
    value TEXT    NOT NULL,
    PRIMARY KEY (org, field, value)
) WITHOUT ROWID;

INSERT OR IGNORE INTO request_log_values (org, field, value)
SELECT org, 2, api_key_id FROM request_logs WHERE api_key_id IS NOT NULL;
INSERT OR IGNORE INTO request_log_values (org, field, value)
SELECT org, 3, service_account_id FROM request_logs WHERE service_account_id IS NOT NULL;
INSERT OR IGNORE INTO request_log_values (org, field, value)
SELECT org, 4, email FROM request_logs WHERE email IS NOT NULL;
