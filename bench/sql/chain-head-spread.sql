-- The same work with a head row per client: nothing is shared but the disk.
BEGIN;
UPDATE chain_rows SET seq = seq + 1 WHERE id = :client_id + 1 RETURNING seq, last_hash;
INSERT INTO chain_log (action, hash) VALUES ('auth.token_refreshed', md5(random()::text));
UPDATE chain_rows SET last_hash = md5(random()::text) WHERE id = :client_id + 1;
COMMIT;
