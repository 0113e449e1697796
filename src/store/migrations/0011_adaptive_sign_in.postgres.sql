-- Adaptive sign-in: the devices an account signs in from, where each session began, and the
-- risk of every attempt with the signals that made it.

CREATE TABLE devices (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the portal's device id, else of the user agent, Accept-Language and client hints.
    fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 64),
    browser TEXT NOT NULL,
    os TEXT NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    last_ip inet,
    last_place TEXT,
    UNIQUE (user_id, fingerprint)
);

ALTER TABLE sessions
    ADD COLUMN country TEXT CHECK (country IS NULL OR length(country) = 2),
    ADD COLUMN place jsonb CHECK (place IS NULL OR jsonb_typeof(place) = 'object'),
    ADD COLUMN device_id BIGINT REFERENCES devices (id) ON DELETE SET NULL;

ALTER TABLE login_attempts
    ADD COLUMN risk_score INTEGER CHECK (risk_score IS NULL OR risk_score >= 0),
    ADD COLUMN risk_signals jsonb CHECK (risk_signals IS NULL OR jsonb_typeof(risk_signals) = 'array'),
    ADD COLUMN country TEXT CHECK (country IS NULL OR length(country) = 2),
    ADD COLUMN user_id BIGINT;
CREATE INDEX login_attempts_user ON login_attempts (user_id, attempted_at);

-- "This wasn't me": the link in a sign-in notice, and the password reset it then requires.
CREATE TABLE not_me_tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    credential_stamp BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX not_me_tokens_user ON not_me_tokens (user_id);
ALTER TABLE users ADD COLUMN password_reset_required boolean NOT NULL DEFAULT false;
