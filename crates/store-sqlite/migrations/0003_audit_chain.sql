-- Version 3: the audit log's hash chain and the audit dialect's filter indexes.
--
-- Each org's audit entries form a hash chain in insertion order (see the model's `chain`
-- module): `chain_pos` counts from 1 per org, `prev_hash`/`hash` are the 32-byte link hashes.
-- Entries written before this version are linked by the migration code right after this
-- script (SQLite cannot compute SHA-256), so after version 3 every row has all three.
ALTER TABLE audit_entries ADD COLUMN chain_pos INTEGER;
ALTER TABLE audit_entries ADD COLUMN prev_hash BLOB;
ALTER TABLE audit_entries ADD COLUMN hash BLOB;

CREATE UNIQUE INDEX audit_entries_by_chain ON audit_entries (org, chain_pos);

-- Every org's head: entries in its chain and the last hash. The writer appends from here;
-- `verify` checks that the chain it recomputes ends here (so dropping the newest entries
-- shows).
CREATE TABLE audit_heads (
    org     INTEGER PRIMARY KEY,
    entries INTEGER NOT NULL,
    hash    BLOB    NOT NULL
);

-- The audit dialect's equality filters, each followed by its order (newest first, by id).
CREATE INDEX audit_entries_by_resource_type ON audit_entries (org, resource_type, created_at, id);
CREATE INDEX audit_entries_by_action ON audit_entries (org, action, created_at, id);
CREATE INDEX audit_entries_by_resource_id ON audit_entries (org, resource_id, created_at, id)
    WHERE resource_id IS NOT NULL;
