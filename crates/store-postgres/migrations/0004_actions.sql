-- Actions (SPEC §7): signing credentials, webhook destinations, versioned action definitions,
-- and the action records apitrail delivers with their events. The same tables as SQLite's
-- version 4. JSON that apitrail passes through (schemas, inputs, signal data) is kept as the
-- client's text (not jsonb, which would reorder keys); searches cast it where they need to.
-- Every primary key leads with `org`; the dispatcher's two queue indexes are the only ones
-- that do not (it leases across orgs, see ARCHITECTURE.md).

CREATE TABLE credentials (
    org        bigint NOT NULL,
    id         uuid   NOT NULL,
    label      text   NOT NULL,
    -- The signing key itself: HMAC needs it (unlike API keys, which are stored hashed).
    secret     bytea  NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (org, id)
);

CREATE TABLE destinations (
    org                  bigint  NOT NULL,
    id                   uuid    NOT NULL,
    label                text    NOT NULL,
    url                  text    NOT NULL,
    headers              text    NOT NULL,
    signaling            boolean NOT NULL,
    response_time_sla_ms bigint  NOT NULL,
    credential_id        uuid,
    tags                 text    NOT NULL,
    created_at           bigint  NOT NULL,
    updated_at           bigint  NOT NULL,
    deleted_at           bigint,
    PRIMARY KEY (org, id)
);

CREATE TABLE action_definitions (
    org          bigint NOT NULL,
    id           uuid   NOT NULL,
    version      bigint NOT NULL,
    variant      text COLLATE "C" NOT NULL,
    alias        text   NOT NULL,
    schema       text   NOT NULL,
    destinations text   NOT NULL,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    deleted_at   bigint,
    PRIMARY KEY (org, id, version)
);

CREATE TABLE action_names (
    org           bigint NOT NULL,
    name          text COLLATE "C" NOT NULL,
    definition_id uuid   NOT NULL,
    PRIMARY KEY (org, name)
);

CREATE TABLE action_records (
    org            bigint NOT NULL,
    id             uuid   NOT NULL,
    definition_id  uuid   NOT NULL,
    version        bigint NOT NULL,
    variant        text COLLATE "C" NOT NULL,
    input          text   NOT NULL,
    timeout_secs   bigint NOT NULL,
    tags           text   NOT NULL,
    destination_id uuid   NOT NULL,
    request_id     text,
    created_at     bigint NOT NULL,
    status         text COLLATE "C" NOT NULL,
    attempt        bigint NOT NULL,
    updated_at     bigint NOT NULL,
    available_at   bigint NOT NULL,
    timeout_at     bigint,
    started_at     bigint,
    completed_at   bigint,
    error_message  text,
    lease_owner    text,
    lease_until    bigint,
    PRIMARY KEY (org, id)
);
CREATE INDEX action_records_by_created ON action_records (org, created_at, id);
CREATE INDEX action_records_by_definition ON action_records (org, definition_id, created_at, id);
CREATE INDEX action_records_by_variant ON action_records (org, variant, created_at, id);
CREATE INDEX action_records_due ON action_records (available_at) WHERE status = 'pending';
CREATE INDEX action_records_acknowledged ON action_records (timeout_at)
    WHERE status = 'acknowledged';

CREATE TABLE action_events (
    org          bigint NOT NULL,
    record_id    uuid   NOT NULL,
    id           uuid   NOT NULL,
    kind         text   NOT NULL,
    status       text   NOT NULL,
    attempt      bigint NOT NULL,
    available_at bigint,
    timeout_at   bigint,
    message      text,
    data         text,
    created_at   bigint NOT NULL,
    PRIMARY KEY (org, record_id, id)
);
