-- apitrail's PostgreSQL schema, version 1.
--
-- Conventions (as in the SQLite schema, so both backends answer byte for byte alike):
-- timestamps are bigint Unix milliseconds; record ids are uuid; `org` is the internal key of
-- `orgs`. Every primary key and unique index of org data leads with `org`, so the tables can
-- be distributed by `org` (e.g. Citus) with `orgs` as a reference table; see ARCHITECTURE.md.
-- Text that is sorted or compared byte-wise uses the "C" collation.

CREATE TABLE orgs (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         text COLLATE "C" NOT NULL UNIQUE,
    name       text   NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE api_keys (
    org                bigint NOT NULL REFERENCES orgs (seq),
    id                 uuid   NOT NULL,
    secret_hash        bytea  NOT NULL,
    name               text   NOT NULL,
    scopes             bigint NOT NULL,
    principal_type     text   NOT NULL,
    principal_id       text   NOT NULL,
    user_id            text,
    email              text,
    service_account_id text,
    created_at         bigint NOT NULL,
    last_used_at       bigint,
    revoked_at         bigint,
    PRIMARY KEY (org, id)
);
-- Authentication looks a key up by its hash alone (the one query that is not scoped to an
-- org); a secret is 238 random bits, so the hash is unique in practice without a unique
-- index that could not lead with `org`.
CREATE INDEX api_keys_by_hash ON api_keys (secret_hash);
CREATE INDEX api_keys_by_created ON api_keys (org, created_at, id);

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
    response_body           text,
    PRIMARY KEY (org, id)
);
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

CREATE TABLE audit_entries (
    org           bigint NOT NULL,
    id            uuid   NOT NULL,
    created_at    bigint NOT NULL,
    user_id       text,
    action        text COLLATE "C" NOT NULL,
    resource_type text COLLATE "C" NOT NULL,
    resource_id   text COLLATE "C",
    details       text,
    ip_address    text,
    request_id    text,
    chain_pos     bigint NOT NULL,
    prev_hash     bytea  NOT NULL,
    hash          bytea  NOT NULL,
    PRIMARY KEY (org, id)
);
CREATE UNIQUE INDEX audit_entries_by_chain ON audit_entries (org, chain_pos);
CREATE INDEX audit_entries_by_created ON audit_entries (org, created_at, id);
CREATE INDEX audit_entries_by_resource_type ON audit_entries (org, resource_type, created_at, id);
CREATE INDEX audit_entries_by_action ON audit_entries (org, action, created_at, id);
CREATE INDEX audit_entries_by_resource_id ON audit_entries (org, resource_id, created_at, id)
    WHERE resource_id IS NOT NULL;

-- Every org's chain head. Appending locks the org's row (SELECT ... FOR UPDATE), which
-- serializes each org's chain across all servers sharing the database.
CREATE TABLE audit_heads (
    org     bigint PRIMARY KEY,
    entries bigint NOT NULL,
    hash    bytea  NOT NULL
);
