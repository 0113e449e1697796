-- Privacy. Lab invitations: a lab admin invites an address, not an account id, so the
-- directory cannot be probed; the person accepts (signed in with that address, verified) or
-- declines.

CREATE TABLE lab_invitations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lab_id BIGINT NOT NULL REFERENCES labs (id) ON DELETE CASCADE,
    -- Normalised to lower case by the service (users::Email).
    email TEXT NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    role TEXT NOT NULL CHECK (role IN ('lab_admin', 'member', 'viewer')),
    token_hash TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64),
    invited_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'accepted', 'declined', 'revoked')),
    answered_at timestamptz,
    answered_by BIGINT REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX lab_invitations_lab ON lab_invitations (lab_id, created_at);
CREATE INDEX lab_invitations_expiry ON lab_invitations (expires_at);

-- Consent: each acceptance of a version of the terms of service or the privacy notice, with
-- when and from where; a sign-in asks again when the version in force changes.
CREATE TABLE consents (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document TEXT NOT NULL CHECK (document IN ('terms', 'privacy')),
    version TEXT NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    accepted_at timestamptz NOT NULL,
    ip inet,
    UNIQUE (user_id, document, version)
);

-- A sign-in waiting for the person's consent is one more kind of challenge.
ALTER TABLE mfa_challenges DROP CONSTRAINT mfa_challenges_purpose_check;
ALTER TABLE mfa_challenges ADD CONSTRAINT mfa_challenges_purpose_check CHECK (purpose IN
    ('login', 'enrollment', 'step_up', 'passwordless', 'passkey_registration', 'verification',
     'consent'));
