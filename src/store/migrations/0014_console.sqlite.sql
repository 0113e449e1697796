-- The browser console's sign-ins (`/account`, `/admin`): a cookie names one of these rows by
-- the hash of its secret; each rides on a session of `sessions`, so revoking that session
-- (or signing out everywhere) ends it too. Idle and absolute timeouts are the service's.
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_session ON console_sessions (session_id);
