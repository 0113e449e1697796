-- The audit chain's head (one row, as in UMS) and, for comparison, a row per client.
DROP TABLE IF EXISTS chain_head, chain_rows, chain_log;
CREATE TABLE chain_head (id int PRIMARY KEY, seq bigint NOT NULL, last_hash text NOT NULL);
INSERT INTO chain_head VALUES (1, 0, 'x');
CREATE TABLE chain_rows (id int PRIMARY KEY, seq bigint NOT NULL, last_hash text NOT NULL);
INSERT INTO chain_rows SELECT g, 0, 'x' FROM generate_series(1, :clients) g;
CREATE TABLE chain_log (seq bigserial PRIMARY KEY, action text, hash text);
