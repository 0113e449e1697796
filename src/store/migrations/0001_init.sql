-- UMS schema, version 1. One text for SQLite and PostgreSQL: columns are BIGINT or TEXT only
-- (times are Unix milliseconds, flags 0/1), and {{id}} becomes each dialect's identity key.

CREATE TABLE users (
    id {{id}},
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
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_created_at ON users (created_at);

CREATE TABLE labs (
    id {{id}},
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_active BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX labs_code_key ON labs (lower(code));

CREATE TABLE lab_memberships (
    id {{id}},
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    lab_id BIGINT NOT NULL REFERENCES labs (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX lab_memberships_user_lab_key ON lab_memberships (user_id, lab_id);
CREATE INDEX lab_memberships_lab_user ON lab_memberships (lab_id, user_id);

CREATE TABLE password_reset_tokens (
    id {{id}},
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE UNIQUE INDEX password_reset_tokens_hash_key ON password_reset_tokens (token_hash);
CREATE INDEX password_reset_tokens_user ON password_reset_tokens (user_id);

CREATE TABLE email_verification_tokens (
    id {{id}},
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE UNIQUE INDEX email_verification_tokens_hash_key ON email_verification_tokens (token_hash);
CREATE INDEX email_verification_tokens_user ON email_verification_tokens (user_id);

-- Append-only: each event carries the hash of the one before it (see audit/).
CREATE TABLE audit_logs (
    id {{id}},
    seq BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    action TEXT NOT NULL,
    success BIGINT NOT NULL,
    user_id BIGINT,
    actor_ip TEXT,
    user_agent TEXT,
    resource_type TEXT,
    resource_id TEXT,
    lab_id BIGINT,
    details TEXT NOT NULL,
    request_id TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE UNIQUE INDEX audit_logs_seq_key ON audit_logs (seq);
CREATE INDEX audit_logs_occurred_at ON audit_logs (occurred_at);
CREATE INDEX audit_logs_user ON audit_logs (user_id, occurred_at);
CREATE INDEX audit_logs_action ON audit_logs (action, occurred_at);

-- The head of the audit chain; updating its one row serialises writers of the chain.
CREATE TABLE audit_chain (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE login_attempts (
    id {{id}},
    username TEXT NOT NULL,
    ip TEXT,
    user_agent TEXT,
    success BIGINT NOT NULL,
    attempted_at BIGINT NOT NULL
);
CREATE INDEX login_attempts_attempted_at ON login_attempts (attempted_at);
CREATE INDEX login_attempts_username ON login_attempts (username, attempted_at);
CREATE INDEX login_attempts_ip ON login_attempts (ip, attempted_at);

-- Failure counters of submitted usernames that match no account, so that locking out an
-- unknown name looks exactly like locking out a real one.
CREATE TABLE login_throttles (
    subject TEXT PRIMARY KEY,
    failed_login_count BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT,
    updated_at BIGINT NOT NULL
);

-- One row a login: the family of its refresh tokens.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    ip TEXT,
    user_agent TEXT,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, revoked_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    spent_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
