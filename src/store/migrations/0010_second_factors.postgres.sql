-- Second factors (TOTP, recovery codes, passkeys), the short-lived challenges of a two-step
-- sign-in or a passkey ceremony, a lab's policy, and when a session last proved who it is.

CREATE TABLE totp_factors (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The shared secret, sealed under UMS_SECRET_KEY (security/sealing.rs).
    secret_sealed TEXT NOT NULL CHECK (secret_sealed <> ''),
    -- An enrolment counts only once a code confirmed it.
    confirmed_at timestamptz,
    -- The newest 30-second step a code was accepted for: a code is good once.
    last_used_step BIGINT NOT NULL DEFAULT 0 CHECK (last_used_step >= 0),
    created_at timestamptz NOT NULL
);

CREATE TABLE recovery_codes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL CHECK (length(code_hash) = 64),
    created_at timestamptz NOT NULL,
    used_at timestamptz,
    UNIQUE (user_id, code_hash)
);

CREATE TABLE passkeys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL UNIQUE,
    -- The WebAuthn user handle: random, the same for every passkey of one user.
    user_handle uuid NOT NULL,
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    -- webauthn-rs's Passkey: the public key and its signature counter.
    credential jsonb NOT NULL CHECK (jsonb_typeof(credential) = 'object'),
    created_at timestamptz NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX passkeys_user ON passkeys (user_id);
CREATE INDEX passkeys_user_handle ON passkeys (user_handle);

CREATE TABLE mfa_challenges (
    token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
    purpose TEXT NOT NULL CHECK (purpose IN
        ('login', 'enrollment', 'step_up', 'passwordless', 'passkey_registration', 'verification')),
    user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,
    session_id TEXT REFERENCES sessions (id) ON DELETE CASCADE,
    -- The server half of a WebAuthn ceremony, when one is under way.
    ceremony jsonb,
    -- The sign-in's risk, weighed at its password step, carried to the session it opens.
    risk jsonb CHECK (risk IS NULL OR jsonb_typeof(risk) = 'object'),
    failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    spent_at timestamptz,
    CHECK ((purpose = 'passwordless') = (user_id IS NULL)),
    CHECK ((purpose = 'step_up') = (session_id IS NOT NULL))
);
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);

ALTER TABLE labs ADD COLUMN require_mfa boolean NOT NULL DEFAULT false;
ALTER TABLE sessions ADD COLUMN authenticated_at timestamptz;
