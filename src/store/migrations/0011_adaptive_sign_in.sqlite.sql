-- Adaptive sign-in: the devices an account signs in from, where each session began, and the
-- risk of every attempt with the signals that made it.

CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the portal's device id, else of the user agent, Accept-Language and client hints.
    fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 64),
    browser TEXT NOT NULL,
    os TEXT NOT NULL,
    first_seen_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    last_ip TEXT,
    last_place TEXT,
    UNIQUE (user_id, fingerprint)
);

ALTER TABLE sessions ADD COLUMN country TEXT CHECK (country IS NULL OR length(country) = 2);
ALTER TABLE sessions ADD COLUMN place TEXT
    CHECK (place IS NULL OR (json_valid(place) AND json_type(place) = 'object'));
ALTER TABLE sessions ADD COLUMN device_id INTEGER REFERENCES devices (id) ON DELETE SET NULL;

ALTER TABLE login_attempts ADD COLUMN risk_score INTEGER
    CHECK (risk_score IS NULL OR risk_score >= 0);
ALTER TABLE login_attempts ADD COLUMN risk_signals TEXT
    CHECK (risk_signals IS NULL OR (json_valid(risk_signals) AND json_type(risk_signals) = 'array'));
ALTER TABLE login_attempts ADD COLUMN country TEXT CHECK (country IS NULL OR length(country) = 2);
ALTER TABLE login_attempts ADD COLUMN user_id INTEGER;
CREATE INDEX login_attempts_user ON login_attempts (user_id, attempted_at);

-- "This wasn't me": the link in a sign-in notice, and the password reset it then requires.
CREATE TABLE not_me_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    credential_stamp INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX not_me_tokens_user ON not_me_tokens (user_id);
ALTER TABLE users ADD COLUMN password_reset_required INTEGER NOT NULL DEFAULT 0
    CHECK (password_reset_required IN (0, 1));
