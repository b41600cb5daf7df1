-- apitrail's SQLite schema, version 1.
--
-- Conventions: timestamps are INTEGER Unix milliseconds; record ids are 16-byte UUID BLOBs
-- (memcmp order = UUID order, as in PostgreSQL); `org` is the internal key of `orgs`, so
-- indexes carry an integer instead of the org's text id. Every index used by a list query
-- starts with `org`, which is how tenant isolation and index use coincide.

CREATE TABLE orgs (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id                 BLOB    PRIMARY KEY,
    org                INTEGER NOT NULL REFERENCES orgs (seq),
    secret_hash        BLOB    NOT NULL UNIQUE,
    name               TEXT    NOT NULL,
    scopes             INTEGER NOT NULL,
    principal_type     TEXT    NOT NULL,
    principal_id       TEXT    NOT NULL,
    user_id            TEXT,
    email              TEXT,
    service_account_id TEXT,
    created_at         INTEGER NOT NULL,
    last_used_at       INTEGER,
    revoked_at         INTEGER
) WITHOUT ROWID;

CREATE INDEX api_keys_by_org ON api_keys (org, created_at, id);

-- Column order matters: SQLite reads a row's columns front to back, so the large, rarely
-- read bodies and metadata come last and list queries never walk their overflow pages.
CREATE TABLE request_logs (
    seq                     INTEGER PRIMARY KEY,
    org                     INTEGER NOT NULL,
    id                      BLOB    NOT NULL,
    created_at              INTEGER NOT NULL,
    -- -1 when unknown, so that the column is a total order for keyset paging.
    duration_ms             INTEGER NOT NULL,
    status_code             INTEGER NOT NULL,
    method                  TEXT    NOT NULL,
    path                    TEXT    NOT NULL,
    route_pattern           TEXT,
    request_id              TEXT,
    auth_type               TEXT,
    error_code              TEXT,
    query                   TEXT,
    started_at              INTEGER,
    completed_at            INTEGER,
    client_ip               TEXT,
    user_agent              TEXT,
    origin                  TEXT,
    principal_type          TEXT,
    principal_id            TEXT,
    user_id                 TEXT,
    email                   TEXT,
    api_key_id              TEXT,
    service_account_id      TEXT,
    price                   TEXT,
    minutes                 INTEGER,
    seconds                 INTEGER,
    stripe_invoice_item_id  TEXT,
    request_body_truncated  INTEGER NOT NULL DEFAULT 0,
    response_body_truncated INTEGER NOT NULL DEFAULT 0,
    metadata                TEXT,
    request_body            TEXT,
    response_body           TEXT
);

-- Idempotent ingest and lookups by id.
CREATE UNIQUE INDEX request_logs_by_id ON request_logs (org, id);
-- One order per sort key, each ending in the id tie-break, so every (key, id) keyset seek
-- is a range scan. The duration order lives in the leveled tables below.
CREATE INDEX request_logs_by_created ON request_logs (org, created_at, id);
CREATE INDEX request_logs_by_status ON request_logs (org, status_code, id);
-- Status ranges in the default order: one run per status code, merged at query time (a
-- skip-scan), since a B-tree cannot give created_at order across a range of status codes.
CREATE INDEX request_logs_by_status_created ON request_logs (org, status_code, created_at, id);
-- Equality filters, each followed by the default order, so a rare value is found without
-- scanning the org's whole history.
CREATE INDEX request_logs_by_method ON request_logs (org, method, created_at, id);
CREATE INDEX request_logs_by_route ON request_logs (org, route_pattern, created_at, id);
CREATE INDEX request_logs_by_auth_type ON request_logs (org, auth_type, created_at, id);

-- Orders on random keys (duration_ms, request_id), kept in three levels each instead of one
-- index: inserts go to the small l0, which moves into l1 (and l1 into l2) in sorted sweeps.
-- See src/levels.rs for why. `k` is the key; `seq` points at the request_logs row. The
-- duration levels carry the status code, so a status range is tested without reading rows.
CREATE TABLE request_logs_duration_l0 (
    org INTEGER NOT NULL, k INTEGER NOT NULL, id BLOB NOT NULL, seq INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    PRIMARY KEY (org, k, id)
) WITHOUT ROWID;
CREATE TABLE request_logs_duration_l1 (
    org INTEGER NOT NULL, k INTEGER NOT NULL, id BLOB NOT NULL, seq INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    PRIMARY KEY (org, k, id)
) WITHOUT ROWID;
CREATE TABLE request_logs_duration_l2 (
    org INTEGER NOT NULL, k INTEGER NOT NULL, id BLOB NOT NULL, seq INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    PRIMARY KEY (org, k, id)
) WITHOUT ROWID;
CREATE TABLE request_logs_request_id_l0 (
    org INTEGER NOT NULL, k TEXT NOT NULL, id BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (org, k, id)
) WITHOUT ROWID;
CREATE TABLE request_logs_request_id_l1 (
    org INTEGER NOT NULL, k TEXT NOT NULL, id BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (org, k, id)
) WITHOUT ROWID;
CREATE TABLE request_logs_request_id_l2 (
    org INTEGER NOT NULL, k TEXT NOT NULL, id BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (org, k, id)
) WITHOUT ROWID;

CREATE TABLE audit_entries (
    seq           INTEGER PRIMARY KEY,
    org           INTEGER NOT NULL,
    id            BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    user_id       TEXT,
    action        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT,
    details       TEXT,
    ip_address    TEXT,
    request_id    TEXT
);

CREATE UNIQUE INDEX audit_entries_by_id ON audit_entries (org, id);
CREATE INDEX audit_entries_by_created ON audit_entries (org, created_at, id);
