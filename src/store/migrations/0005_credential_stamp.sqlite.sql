-- SQLite hands out max(id) + 1 for an INTEGER PRIMARY KEY, so deleting the newest user gave
-- its id to the next one, with its audit history and every downstream reference.
-- AUTOINCREMENT never reuses an id. SQLite cannot alter a key, so the tables are rebuilt by
-- its documented procedure (new table, copy, drop, rename); the runner turns foreign keys
-- off around this version and checks them all before it commits.

CREATE TABLE users_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    is_active BIGINT NOT NULL DEFAULT 1,
    is_admin BIGINT NOT NULL DEFAULT 0,
    email_verified BIGINT NOT NULL DEFAULT 0,
    failed_login_count BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT,
    last_login_at BIGINT,
    password_changed_at BIGINT,
    mfa_enabled BIGINT NOT NULL DEFAULT 0,
    mfa_secret TEXT,
    new_login_alerts BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    credential_stamp BIGINT NOT NULL DEFAULT 0
);
INSERT INTO users_rebuilt SELECT id, username, email, password_hash, first_name, last_name,
    is_active, is_admin, email_verified, failed_login_count, locked_until, last_login_at,
    password_changed_at, mfa_enabled, mfa_secret, new_login_alerts, created_at, updated_at,
    credential_stamp
FROM users;
DROP TABLE users;
ALTER TABLE users_rebuilt RENAME TO users;
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_created_at ON users (created_at);

CREATE TABLE labs_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_active BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO labs_rebuilt SELECT id, code, name, description, is_active, created_at, updated_at
FROM labs;
DROP TABLE labs;
ALTER TABLE labs_rebuilt RENAME TO labs;
CREATE UNIQUE INDEX labs_code_key ON labs (lower(code));

CREATE TABLE lab_memberships_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lab_id BIGINT NOT NULL REFERENCES labs (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO lab_memberships_rebuilt SELECT id, user_id, lab_id, role, created_at, updated_at
FROM lab_memberships;
DROP TABLE lab_memberships;
ALTER TABLE lab_memberships_rebuilt RENAME TO lab_memberships;
CREATE UNIQUE INDEX lab_memberships_user_lab_key ON lab_memberships (user_id, lab_id);
CREATE INDEX lab_memberships_lab_user ON lab_memberships (lab_id, user_id);

-- The sequences start past every id ever handed out here, not only those still present: the
-- newest user or lab may have been deleted before this version, and the audit trail
-- remembers it.
DELETE FROM sqlite_sequence WHERE name IN ('users', 'labs');
INSERT INTO sqlite_sequence (name, seq)
SELECT 'users', MAX(id) FROM (
    SELECT COALESCE(MAX(id), 0) AS id FROM users
    UNION ALL SELECT COALESCE(MAX(user_id), 0) FROM audit_logs
    UNION ALL SELECT COALESCE(MAX(CAST(resource_id AS INTEGER)), 0) FROM audit_logs
        WHERE resource_type = 'user' AND resource_id GLOB '[0-9]*'
);
INSERT INTO sqlite_sequence (name, seq)
SELECT 'labs', MAX(id) FROM (
    SELECT COALESCE(MAX(id), 0) AS id FROM labs
    UNION ALL SELECT COALESCE(MAX(lab_id), 0) FROM audit_logs
    UNION ALL SELECT COALESCE(MAX(CAST(resource_id AS INTEGER)), 0) FROM audit_logs
        WHERE resource_type = 'lab' AND resource_id GLOB '[0-9]*'
);
