-- Version 4: actions (SPEC §7): signing credentials, webhook destinations, versioned action
-- definitions, and the action records apitrail delivers with their events.
--
-- JSON that apitrail passes through (schemas, inputs, signal data) is kept as the client's
-- text; tags and headers are JSON objects of strings with sorted keys.

CREATE TABLE credentials (
    org        INTEGER NOT NULL,
    id         BLOB    NOT NULL,
    label      TEXT    NOT NULL,
    -- The signing key itself: HMAC needs it (unlike API keys, which are stored hashed).
    secret     BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;

CREATE TABLE destinations (
    org                  INTEGER NOT NULL,
    id                   BLOB    NOT NULL,
    label                TEXT    NOT NULL,
    url                  TEXT    NOT NULL,
    headers              TEXT    NOT NULL,
    signaling            INTEGER NOT NULL,
    response_time_sla_ms INTEGER NOT NULL,
    credential_id        BLOB,
    tags                 TEXT    NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    deleted_at           INTEGER,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;

-- One row per version of a definition.
CREATE TABLE action_definitions (
    org          INTEGER NOT NULL,
    id           BLOB    NOT NULL,
    version      INTEGER NOT NULL,
    variant      TEXT    NOT NULL,
    alias        TEXT    NOT NULL,
    schema       TEXT    NOT NULL,
    -- [{"id", "destination_id", "is_default"}]
    destinations TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    deleted_at   INTEGER,
    PRIMARY KEY (org, id, version)
) WITHOUT ROWID;

-- The names (variant and aliases) of live definitions: unique per org, so that a trigger's
-- `action` names one definition.
CREATE TABLE action_names (
    org           INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    definition_id BLOB    NOT NULL,
    PRIMARY KEY (org, name)
) WITHOUT ROWID;

CREATE TABLE action_records (
    org            INTEGER NOT NULL,
    id             BLOB    NOT NULL,
    definition_id  BLOB    NOT NULL,
    version        INTEGER NOT NULL,
    variant        TEXT    NOT NULL,
    input          TEXT    NOT NULL,
    timeout_secs   INTEGER NOT NULL,
    tags           TEXT    NOT NULL,
    destination_id BLOB    NOT NULL,
    request_id     TEXT,
    created_at     INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    available_at   INTEGER NOT NULL,
    timeout_at     INTEGER,
    started_at     INTEGER,
    completed_at   INTEGER,
    error_message  TEXT,
    -- The dispatcher holding the record for a delivery, and until when.
    lease_owner    TEXT,
    lease_until    INTEGER,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
-- The dialect's order (newest first) and its filters.
CREATE INDEX action_records_by_created ON action_records (org, created_at, id);
CREATE INDEX action_records_by_definition ON action_records (org, definition_id, created_at, id);
CREATE INDEX action_records_by_variant ON action_records (org, variant, created_at, id);
-- The dispatcher's queues (across orgs): due pending records, acknowledgements to time out.
CREATE INDEX action_records_due ON action_records (available_at) WHERE status = 'pending';
CREATE INDEX action_records_acknowledged ON action_records (timeout_at)
    WHERE status = 'acknowledged';

CREATE TABLE action_events (
    org          INTEGER NOT NULL,
    record_id    BLOB    NOT NULL,
    id           BLOB    NOT NULL,
    kind         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    available_at INTEGER,
    timeout_at   INTEGER,
    message      TEXT,
    data         TEXT,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (org, record_id, id)
) WITHOUT ROWID;
