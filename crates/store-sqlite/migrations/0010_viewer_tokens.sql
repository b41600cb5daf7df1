-- Viewer tokens (SPEC §10): read-only, short-lived credentials of one org. Only the SHA-256 of
-- the secret is kept, as for API keys. `kinds` is a bit set (1 request_logs, 2 audit_log,
-- 4 action_records); `user_id` and `api_key_id` are the filter forced on every query.
CREATE TABLE viewer_tokens (
    id          BLOB    PRIMARY KEY,
    org         INTEGER NOT NULL REFERENCES orgs (seq),
    secret_hash BLOB    NOT NULL UNIQUE,
    kinds       INTEGER NOT NULL,
    user_id     TEXT,
    api_key_id  TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;

-- Counting an org's live tokens and pruning its dead ones.
CREATE INDEX viewer_tokens_by_org ON viewer_tokens (org, expires_at);
