-- How the user proved who they are when the session began (RFC 8176 method names, space
-- separated: `pwd` until second factors exist); the session's tokens carry it as `amr`, and
-- its start as `auth_time`.
ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd' CHECK (amr <> '');
