-- The request timeline (GET /v1/requests/{request_id}/timeline): an org's audit entries and
-- action records by request id, oldest first. Each spelling of an id is read in order from
-- these indexes up to the timeline's bound, so the lookup reads a bounded number of rows
-- however many records share the id. Records without a request id (most ingested audit
-- entries) are left out of the indexes: a lookup by id never wants them. Both lead with
-- `org`, like every index of org data (ARCHITECTURE.md, distributing by org).
CREATE INDEX audit_entries_by_request_id ON audit_entries (org, request_id, created_at, id)
    WHERE request_id IS NOT NULL;
CREATE INDEX action_records_by_request_id ON action_records (org, request_id, created_at, id)
    WHERE request_id IS NOT NULL;
