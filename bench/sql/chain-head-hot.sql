-- An audited write as UMS commits it: claim the next seq on the one head row, insert the
-- event, move the head's hash, commit. Every client shares the head.
BEGIN;
UPDATE chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, last_hash;
INSERT INTO chain_log (action, hash) VALUES ('auth.token_refreshed', md5(random()::text));
UPDATE chain_head SET last_hash = md5(random()::text) WHERE id = 1;
COMMIT;
