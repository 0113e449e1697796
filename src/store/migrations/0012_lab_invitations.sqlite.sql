-- Lab invitations: a lab admin invites an address, not an account id, so the directory cannot
-- be probed; the person accepts (signed in with that address, verified) or declines.

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
