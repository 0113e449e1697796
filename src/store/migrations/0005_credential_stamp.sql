-- Every credential event (password reset or change, email change, deactivation, role
-- change) moves the account's credential stamp on. An emailed link carries the stamp it was
-- issued under and works only while the account's stamp is still that one, so a credential
-- event voids every link outstanding.
ALTER TABLE users ADD COLUMN credential_stamp BIGINT NOT NULL DEFAULT 0;
ALTER TABLE password_reset_tokens ADD COLUMN credential_stamp BIGINT NOT NULL DEFAULT 0;
ALTER TABLE email_verification_tokens ADD COLUMN credential_stamp BIGINT NOT NULL DEFAULT 0;
