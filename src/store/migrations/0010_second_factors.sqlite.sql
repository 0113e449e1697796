-- Second factors (TOTP, recovery codes, passkeys), the short-lived challenges of a two-step
-- sign-in or a passkey ceremony, a lab's policy, and when a session last proved who it is.

CREATE TABLE totp_factors (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The shared secret, sealed under UMS_SECRET_KEY (security/sealing.rs).
    secret_sealed TEXT NOT NULL CHECK (secret_sealed <> ''),
    -- An enrolment counts only once a code confirmed it.
    confirmed_at INTEGER,
    -- The newest 30-second step a code was accepted for: a code is good once.
    last_used_step INTEGER NOT NULL DEFAULT 0 CHECK (last_used_step >= 0),
    created_at INTEGER NOT NULL
);

CREATE TABLE recovery_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL CHECK (length(code_hash) = 64),
    created_at INTEGER NOT NULL,
    used_at INTEGER,
    UNIQUE (user_id, code_hash)
);

CREATE TABLE passkeys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL UNIQUE,
    -- The WebAuthn user handle: random, the same for every passkey of one user.
    user_handle BLOB NOT NULL CHECK (length(user_handle) = 16),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    -- webauthn-rs's Passkey: the public key and its signature counter.
    credential TEXT NOT NULL CHECK (json_valid(credential) AND json_type(credential) = 'object'),
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX passkeys_user ON passkeys (user_id);
CREATE INDEX passkeys_user_handle ON passkeys (user_handle);

CREATE TABLE mfa_challenges (
    token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
    purpose TEXT NOT NULL CHECK (purpose IN
        ('login', 'enrollment', 'step_up', 'passwordless', 'passkey_registration', 'verification')),
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,
    session_id TEXT REFERENCES sessions (id) ON DELETE CASCADE,
    -- The server half of a WebAuthn ceremony, when one is under way.
    ceremony TEXT CHECK (ceremony IS NULL OR json_valid(ceremony)),
    -- The sign-in's risk, weighed at its password step, carried to the session it opens.
    risk TEXT CHECK (risk IS NULL OR (json_valid(risk) AND json_type(risk) = 'object')),
    failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    spent_at INTEGER,
    CHECK ((purpose = 'passwordless') = (user_id IS NULL)),
    CHECK ((purpose = 'step_up') = (session_id IS NOT NULL))
);
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);

ALTER TABLE labs ADD COLUMN require_mfa INTEGER NOT NULL DEFAULT 0 CHECK (require_mfa IN (0, 1));
ALTER TABLE sessions ADD COLUMN authenticated_at INTEGER;
