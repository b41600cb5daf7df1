-- Version 5: which values of a few filter columns each org's request logs hold.
--
-- A list filtered on a value the org has never logged (an API key, a service account or an
-- email with no calls) would otherwise probe an index of every day partition (or, for the
-- unindexed service account and email, walk the org's whole history) to find nothing; a status range
-- in created_at order would find its codes by a loose scan of every partition's status index.
-- Both now read this table first. Rows are added in the transaction that stores the records
-- holding them and never removed (retention leaves them), so the table may name a value
-- that no stored record has any more, but never misses one that some record has.
CREATE TABLE request_log_values (
    org   bigint   NOT NULL,
    -- 1: status_code (decimal), 2: api_key_id, 3: service_account_id, 4: email.
    field smallint NOT NULL,
    value text COLLATE "C" NOT NULL,
    PRIMARY KEY (org, field, value)
);

INSERT INTO request_log_values (org, field, value)
SELECT DISTINCT org, 1, status_code::text FROM request_logs
UNION
SELECT DISTINCT org, 2, api_key_id FROM request_logs WHERE api_key_id IS NOT NULL
UNION
SELECT DISTINCT org, 3, service_account_id FROM request_logs WHERE service_account_id IS NOT NULL
UNION
SELECT DISTINCT org, 4, email FROM request_logs WHERE email IS NOT NULL;
