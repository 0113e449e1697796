-- Privacy. Lab invitations: a lab admin invites an address, not an account id, so the
-- directory cannot be probed; the person accepts (signed in with that address, verified) or
-- declines.

CREATE TABLE lab_invitations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lab_id INTEGER NOT NULL REFERENCES labs (id) ON DELETE CASCADE,
    -- Normalised to lower case by the service (users::Email).
    email TEXT NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    role TEXT NOT NULL CHECK (role IN ('lab_admin', 'member', 'viewer')),
    token_hash TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64),
    invited_by INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'accepted', 'declined', 'revoked')),
    answered_at INTEGER,
    answered_by INTEGER REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX lab_invitations_lab ON lab_invitations (lab_id, created_at);
CREATE INDEX lab_invitations_expiry ON lab_invitations (expires_at);

-- Consent: each acceptance of a version of the terms of service or the privacy notice, with
-- when and from where; a sign-in asks again when the version in force changes.
CREATE TABLE consents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document TEXT NOT NULL CHECK (document IN ('terms', 'privacy')),
    version TEXT NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    accepted_at INTEGER NOT NULL,
    ip TEXT,
    UNIQUE (user_id, document, version)
);

-- A sign-in waiting for the person's consent is one more kind of challenge. SQLite cannot
-- change a CHECK in place; challenges live five minutes, so the table is made anew.
DROP TABLE mfa_challenges;
CREATE TABLE mfa_challenges (
    token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
    purpose TEXT NOT NULL CHECK (purpose IN
        ('login', 'enrollment', 'step_up', 'passwordless', 'passkey_registration', 'verification',
         'consent')),
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
