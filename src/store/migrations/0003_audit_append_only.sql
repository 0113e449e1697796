-- Archiving moves old events to files; the watermark says how far, and the chain resumes
-- from the hash of the last archived event.
ALTER TABLE audit_chain ADD COLUMN archived_through BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_chain ADD COLUMN archived_hash TEXT NOT NULL DEFAULT '0000000000000000000000000000000000000000000000000000000000000000';
CREATE INDEX login_attempts_success ON login_attempts (success, attempted_at);
