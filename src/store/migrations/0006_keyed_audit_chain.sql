-- The audit chain becomes an HMAC under a key derived from UMS_SECRET_KEY from this seq on
-- (set when the service first runs with a secret key); the events before it keep their
-- plain SHA-256 links.
ALTER TABLE audit_chain ADD COLUMN keyed_from BIGINT;
