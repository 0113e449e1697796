-- SQLite in its own types, with the constraints PostgreSQL has: times stay INTEGER Unix
-- milliseconds (SQLite has no time type; an integer sorts, indexes and compares exactly, and
-- `datetime(x / 1000, 'unixepoch')` shows it), flags are INTEGER limited to 0 and 1, the audit
-- details must be a JSON object, usernames, emails and lab codes compare without regard to
-- case by their column's collation, and roles and states are checked. SQLite cannot add a
-- constraint to a table, so every table is rebuilt by its documented procedure (new table,
-- copy, drop, rename); the runner turns foreign keys off around it and checks them all
-- before it commits.

CREATE TEMP TABLE ums_v7_sequences AS SELECT name, seq FROM sqlite_sequence;

CREATE TABLE users_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL COLLATE NOCASE UNIQUE,
    email TEXT NOT NULL COLLATE NOCASE UNIQUE,
    password_hash TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    is_active INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    is_admin INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    email_verified INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
    failed_login_count INTEGER NOT NULL DEFAULT 0 CHECK (failed_login_count >= 0),
    locked_until INTEGER,
    last_login_at INTEGER,
    password_changed_at INTEGER,
    mfa_enabled INTEGER NOT NULL DEFAULT 0 CHECK (mfa_enabled IN (0, 1)),
    mfa_secret TEXT,
    new_login_alerts INTEGER NOT NULL DEFAULT 1 CHECK (new_login_alerts IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    credential_stamp INTEGER NOT NULL DEFAULT 0 CHECK (credential_stamp >= 0)
);
INSERT INTO users_v8 SELECT id, username, email, password_hash, first_name, last_name,
    is_active, is_admin, email_verified, failed_login_count, locked_until, last_login_at,
    password_changed_at, mfa_enabled, mfa_secret, new_login_alerts, created_at, updated_at,
    credential_stamp
FROM users;
DROP TABLE users;
ALTER TABLE users_v8 RENAME TO users;
CREATE INDEX users_created_at ON users (created_at);

CREATE TABLE labs_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL COLLATE NOCASE UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_active INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO labs_v8 SELECT id, code, name, description, is_active, created_at, updated_at
FROM labs;
DROP TABLE labs;
ALTER TABLE labs_v8 RENAME TO labs;

CREATE TABLE lab_memberships_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lab_id INTEGER NOT NULL REFERENCES labs (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('lab_admin', 'member', 'viewer')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO lab_memberships_v8 SELECT id, user_id, lab_id, role, created_at, updated_at
FROM lab_memberships;
DROP TABLE lab_memberships;
ALTER TABLE lab_memberships_v8 RENAME TO lab_memberships;
CREATE UNIQUE INDEX lab_memberships_user_lab_key ON lab_memberships (user_id, lab_id);
CREATE INDEX lab_memberships_lab_user ON lab_memberships (lab_id, user_id);

CREATE TABLE password_reset_tokens_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    credential_stamp INTEGER NOT NULL DEFAULT 0
);
INSERT INTO password_reset_tokens_v8 SELECT id, user_id, token_hash, created_at, expires_at,
    used_at, credential_stamp
FROM password_reset_tokens;
DROP TABLE password_reset_tokens;
ALTER TABLE password_reset_tokens_v8 RENAME TO password_reset_tokens;
CREATE INDEX password_reset_tokens_user ON password_reset_tokens (user_id);

CREATE TABLE email_verification_tokens_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL COLLATE NOCASE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    credential_stamp INTEGER NOT NULL DEFAULT 0
);
INSERT INTO email_verification_tokens_v8 SELECT id, user_id, token_hash, email, created_at,
    expires_at, used_at, credential_stamp
FROM email_verification_tokens;
DROP TABLE email_verification_tokens;
ALTER TABLE email_verification_tokens_v8 RENAME TO email_verification_tokens;
CREATE INDEX email_verification_tokens_user ON email_verification_tokens (user_id);

-- The chain head comes first, with the trail's old triggers out of the way: they name it,
-- and a rename checks every trigger. The rebuilt trail gets them back below.
DROP TRIGGER audit_logs_no_update;
DROP TRIGGER audit_logs_no_delete;
CREATE TABLE audit_chain_v8 (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    archived_through INTEGER NOT NULL DEFAULT 0,
    archived_hash TEXT NOT NULL DEFAULT '0000000000000000000000000000000000000000000000000000000000000000',
    keyed_from INTEGER,
    CHECK (archived_through <= seq)
);
INSERT INTO audit_chain_v8 SELECT id, seq, last_hash, archived_through, archived_hash, keyed_from
FROM audit_chain;
DROP TABLE audit_chain;
ALTER TABLE audit_chain_v8 RENAME TO audit_chain;

CREATE TABLE audit_logs_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL UNIQUE,
    occurred_at INTEGER NOT NULL,
    action TEXT NOT NULL,
    success INTEGER NOT NULL CHECK (success IN (0, 1)),
    user_id INTEGER,
    actor_ip TEXT,
    user_agent TEXT,
    resource_type TEXT,
    resource_id TEXT,
    lab_id INTEGER,
    details TEXT NOT NULL CHECK (json_valid(details) AND json_type(details) = 'object'),
    request_id TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_logs_v8 SELECT id, seq, occurred_at, action, success, user_id, actor_ip,
    user_agent, resource_type, resource_id, lab_id, details, request_id, prev_hash, hash
FROM audit_logs ORDER BY seq;
DROP TABLE audit_logs;
ALTER TABLE audit_logs_v8 RENAME TO audit_logs;
CREATE INDEX audit_logs_occurred_at ON audit_logs (occurred_at);
CREATE INDEX audit_logs_user ON audit_logs (user_id, occurred_at);
CREATE INDEX audit_logs_action ON audit_logs (action, occurred_at);
CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;
CREATE TRIGGER audit_logs_no_delete BEFORE DELETE ON audit_logs
WHEN OLD.seq > (SELECT archived_through FROM audit_chain WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;

CREATE TABLE login_attempts_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL COLLATE NOCASE,
    ip TEXT,
    user_agent TEXT,
    success INTEGER NOT NULL CHECK (success IN (0, 1)),
    attempted_at INTEGER NOT NULL
);
INSERT INTO login_attempts_v8 SELECT id, username, ip, user_agent, success, attempted_at
FROM login_attempts;
DROP TABLE login_attempts;
ALTER TABLE login_attempts_v8 RENAME TO login_attempts;
CREATE INDEX login_attempts_attempted_at ON login_attempts (attempted_at);
CREATE INDEX login_attempts_username ON login_attempts (username, attempted_at);
CREATE INDEX login_attempts_ip ON login_attempts (ip, attempted_at);
CREATE INDEX login_attempts_success ON login_attempts (success, attempted_at);

CREATE TABLE login_throttles_v8 (
    subject TEXT PRIMARY KEY,
    failed_login_count INTEGER NOT NULL DEFAULT 0 CHECK (failed_login_count >= 0),
    locked_until INTEGER,
    updated_at INTEGER NOT NULL
);
INSERT INTO login_throttles_v8 SELECT subject, failed_login_count, locked_until, updated_at
FROM login_throttles;
DROP TABLE login_throttles;
ALTER TABLE login_throttles_v8 RENAME TO login_throttles;

CREATE TABLE sessions_v8 (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    ip TEXT,
    user_agent TEXT,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_reason TEXT,
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
INSERT INTO sessions_v8 SELECT id, user_id, ip, user_agent, created_at, last_used_at,
    expires_at, revoked_at, revoked_reason
FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v8 RENAME TO sessions;
CREATE INDEX sessions_user ON sessions (user_id, revoked_at);

CREATE TABLE refresh_tokens_v8 (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at INTEGER
);
INSERT INTO refresh_tokens_v8 SELECT token_hash, session_id, issued_at, expires_at, spent_at
FROM refresh_tokens;
DROP TABLE refresh_tokens;
ALTER TABLE refresh_tokens_v8 RENAME TO refresh_tokens;
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys_v8 (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL CHECK (algorithm IN ('RS256', 'ES256', 'EdDSA')),
    private_key TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
INSERT INTO signing_keys_v8 SELECT kid, algorithm, private_key, public_jwk, created_at, retired_at
FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_v8 RENAME TO signing_keys;

CREATE TABLE email_outbox_v8 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL COLLATE NOCASE,
    subject TEXT NOT NULL,
    body TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    claim TEXT,
    lease_until INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    sent_at INTEGER
);
INSERT INTO email_outbox_v8 SELECT id, kind, recipient, subject, body, status, attempts,
    next_attempt_at, claim, lease_until, last_error, created_at, sent_at
FROM email_outbox;
DROP TABLE email_outbox;
ALTER TABLE email_outbox_v8 RENAME TO email_outbox;
CREATE INDEX email_outbox_due ON email_outbox (status, next_attempt_at);
CREATE INDEX email_outbox_recipient ON email_outbox (recipient, created_at);

-- A rebuilt table starts its AUTOINCREMENT sequence at the largest id copied into it, which
-- would forget ids handed out to rows deleted since (version 5 set the sequences past every id
-- the audit trail remembers). Each table keeps the larger of the two. The tables that were
-- not AUTOINCREMENT before (tokens, attempts, the outbox, the trail) are from now on.
UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE(
    (SELECT old.seq FROM temp.ums_v7_sequences AS old WHERE old.name = sqlite_sequence.name), 0));
INSERT INTO sqlite_sequence (name, seq)
SELECT name, seq FROM temp.ums_v7_sequences
WHERE name NOT IN (SELECT name FROM sqlite_sequence);
DROP TABLE temp.ums_v7_sequences;
