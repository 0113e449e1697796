-- Erasure that keeps the audit trail verifiable (crypto-shredding). The personal fields of an
-- audit event (address, browser, names and emails in its details) are sealed under a key of
-- the person they belong to; the chain hashes the sealed form, so destroying the key (it goes
-- with the user row) erases them and the chain still verifies.
CREATE TABLE audit_person_keys (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The person's 256-bit key, sealed under UMS_SECRET_KEY (security/sealing.rs).
    wrapped_key BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- A sealed address can still be searched for (`/api/audit-logs?ip=`) by its keyed tag; the
-- tags go with the person's key.
CREATE TABLE audit_ip_index (
    seq INTEGER NOT NULL,
    user_id INTEGER NOT NULL REFERENCES audit_person_keys (user_id) ON DELETE CASCADE,
    tag BLOB NOT NULL
);
CREATE INDEX audit_ip_index_tag ON audit_ip_index (tag);
CREATE INDEX audit_ip_index_user ON audit_ip_index (user_id);

-- `subject_id`: the person the event's personal details describe (`user_id` is who acted).
-- `sealed`: the sealed envelopes, {"actor": ..., "subject": ...}.
ALTER TABLE audit_logs ADD COLUMN subject_id INTEGER;
ALTER TABLE audit_logs ADD COLUMN sealed TEXT
    CHECK (sealed IS NULL OR (json_valid(sealed) AND json_type(sealed) = 'object'));

-- `rewriting`: set only while the events written before this version are re-sealed and the
-- chain re-linked over them, once; `resealed`: that is done (for good: a trigger keeps it so,
-- and rows may be rewritten only while rewriting and not yet resealed).
-- `relink_pending`: the first seq re-linked, while the signed checkpoint that says so is
-- still to be written.
-- `retained_from`/`retained_hash`: the first event the archives still hold after older ones
-- passed UMS_AUDIT_ARCHIVE_RETENTION, and the hash it links to.
ALTER TABLE audit_chain ADD COLUMN rewriting boolean NOT NULL DEFAULT 0;
ALTER TABLE audit_chain ADD COLUMN resealed boolean NOT NULL DEFAULT 0;
ALTER TABLE audit_chain ADD COLUMN relink_pending INTEGER;
ALTER TABLE audit_chain ADD COLUMN retained_from INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_chain ADD COLUMN retained_hash TEXT NOT NULL
    DEFAULT '0000000000000000000000000000000000000000000000000000000000000000';

DROP TRIGGER audit_logs_no_update;
CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs
WHEN NOT (SELECT rewriting AND NOT resealed FROM audit_chain WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;

CREATE TRIGGER audit_chain_resealed_for_good BEFORE UPDATE ON audit_chain
WHEN OLD.resealed AND (NOT NEW.resealed OR NEW.rewriting)
BEGIN
    SELECT RAISE(ABORT, 'the audit trail was resealed once; it is not rewritten again');
END;

-- An erasure asked for with a grace period (UMS_ERASURE_GRACE): the account is disabled at
-- once and erased when this time comes, unless an admin cancels.
ALTER TABLE users ADD COLUMN erase_after INTEGER;
CREATE INDEX users_erase_after ON users (erase_after) WHERE erase_after IS NOT NULL;
