-- Viewer tokens (SPEC §10): read-only, short-lived credentials of one org. Only the SHA-256 of
-- the secret is kept, as for API keys. `kinds` is a bit set (1 request_logs, 2 audit_log,
-- 4 action_records); `user_id` and `api_key_id` are the filter forced on every query.
CREATE TABLE viewer_tokens (
    org         bigint NOT NULL REFERENCES orgs (seq),
    id          uuid   NOT NULL,
    secret_hash bytea  NOT NULL,
    kinds       bigint NOT NULL,
    user_id     text,
    api_key_id  text,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    revoked_at  bigint,
    PRIMARY KEY (org, id)
);
-- Authentication looks a token up by its hash alone.
CREATE UNIQUE INDEX viewer_tokens_by_hash ON viewer_tokens (secret_hash);
-- Counting an org's live tokens and pruning its dead ones.
CREATE INDEX viewer_tokens_by_org ON viewer_tokens (org, expires_at);
