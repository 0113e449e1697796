-- PostgreSQL in its own types: times are timestamptz, flags boolean, the audit details jsonb,
-- addresses inet, usernames, emails and lab codes citext (unique without regard to case by
-- the column itself), and the database refuses a role, a state or a flag that is not one.
-- Until version 7 every column was BIGINT or TEXT (times in Unix milliseconds, flags 0/1).

CREATE EXTENSION IF NOT EXISTS citext;

-- Exact: integer milliseconds into an interval, no floating point on the way.
CREATE FUNCTION pg_temp.ums_time(at_ms BIGINT) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$ SELECT TIMESTAMPTZ 'epoch' + at_ms * INTERVAL '1 millisecond' $$;

-- Every address the service ever wrote is one it parsed; anything else would stop the upgrade
-- here, naming the value, rather than be lost.
CREATE FUNCTION pg_temp.ums_inet(address TEXT) RETURNS inet
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN address::inet;
EXCEPTION WHEN invalid_text_representation THEN
    RAISE EXCEPTION 'not an IP address: %', address;
END
$$;

DROP INDEX users_username_key;
DROP INDEX users_email_key;
ALTER TABLE users
    ALTER COLUMN username TYPE citext,
    ALTER COLUMN email TYPE citext,
    ALTER COLUMN is_active DROP DEFAULT,
    ALTER COLUMN is_active TYPE boolean USING is_active <> 0,
    ALTER COLUMN is_active SET DEFAULT true,
    ALTER COLUMN is_admin DROP DEFAULT,
    ALTER COLUMN is_admin TYPE boolean USING is_admin <> 0,
    ALTER COLUMN is_admin SET DEFAULT false,
    ALTER COLUMN email_verified DROP DEFAULT,
    ALTER COLUMN email_verified TYPE boolean USING email_verified <> 0,
    ALTER COLUMN email_verified SET DEFAULT false,
    ALTER COLUMN mfa_enabled DROP DEFAULT,
    ALTER COLUMN mfa_enabled TYPE boolean USING mfa_enabled <> 0,
    ALTER COLUMN mfa_enabled SET DEFAULT false,
    ALTER COLUMN new_login_alerts DROP DEFAULT,
    ALTER COLUMN new_login_alerts TYPE boolean USING new_login_alerts <> 0,
    ALTER COLUMN new_login_alerts SET DEFAULT true,
    ALTER COLUMN locked_until TYPE timestamptz USING pg_temp.ums_time(locked_until),
    ALTER COLUMN last_login_at TYPE timestamptz USING pg_temp.ums_time(last_login_at),
    ALTER COLUMN password_changed_at TYPE timestamptz USING pg_temp.ums_time(password_changed_at),
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN updated_at TYPE timestamptz USING pg_temp.ums_time(updated_at),
    ADD CONSTRAINT users_username_key UNIQUE (username),
    ADD CONSTRAINT users_email_key UNIQUE (email),
    ADD CONSTRAINT users_failed_login_count_check CHECK (failed_login_count >= 0),
    ADD CONSTRAINT users_credential_stamp_check CHECK (credential_stamp >= 0);

DROP INDEX labs_code_key;
ALTER TABLE labs
    ALTER COLUMN code TYPE citext,
    ALTER COLUMN is_active DROP DEFAULT,
    ALTER COLUMN is_active TYPE boolean USING is_active <> 0,
    ALTER COLUMN is_active SET DEFAULT true,
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN updated_at TYPE timestamptz USING pg_temp.ums_time(updated_at),
    ADD CONSTRAINT labs_code_key UNIQUE (code);

ALTER TABLE lab_memberships
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN updated_at TYPE timestamptz USING pg_temp.ums_time(updated_at),
    ADD CONSTRAINT lab_memberships_role_check CHECK (role IN ('lab_admin', 'member', 'viewer'));

ALTER TABLE password_reset_tokens
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN expires_at TYPE timestamptz USING pg_temp.ums_time(expires_at),
    ALTER COLUMN used_at TYPE timestamptz USING pg_temp.ums_time(used_at);

ALTER TABLE email_verification_tokens
    ALTER COLUMN email TYPE citext,
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN expires_at TYPE timestamptz USING pg_temp.ums_time(expires_at),
    ALTER COLUMN used_at TYPE timestamptz USING pg_temp.ums_time(used_at);

ALTER TABLE login_attempts
    ALTER COLUMN username TYPE citext,
    ALTER COLUMN ip TYPE inet USING pg_temp.ums_inet(ip),
    ALTER COLUMN success TYPE boolean USING success <> 0,
    ALTER COLUMN attempted_at TYPE timestamptz USING pg_temp.ums_time(attempted_at);

ALTER TABLE login_throttles
    ALTER COLUMN locked_until TYPE timestamptz USING pg_temp.ums_time(locked_until),
    ALTER COLUMN updated_at TYPE timestamptz USING pg_temp.ums_time(updated_at),
    ADD CONSTRAINT login_throttles_failed_login_count_check CHECK (failed_login_count >= 0);

ALTER TABLE sessions
    ALTER COLUMN ip TYPE inet USING pg_temp.ums_inet(ip),
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN last_used_at TYPE timestamptz USING pg_temp.ums_time(last_used_at),
    ALTER COLUMN expires_at TYPE timestamptz USING pg_temp.ums_time(expires_at),
    ALTER COLUMN revoked_at TYPE timestamptz USING pg_temp.ums_time(revoked_at),
    ADD CONSTRAINT sessions_revoked_check CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL));

ALTER TABLE refresh_tokens
    ALTER COLUMN issued_at TYPE timestamptz USING pg_temp.ums_time(issued_at),
    ALTER COLUMN expires_at TYPE timestamptz USING pg_temp.ums_time(expires_at),
    ALTER COLUMN spent_at TYPE timestamptz USING pg_temp.ums_time(spent_at);

ALTER TABLE signing_keys
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN retired_at TYPE timestamptz USING pg_temp.ums_time(retired_at),
    ADD CONSTRAINT signing_keys_algorithm_check CHECK (algorithm IN ('RS256', 'ES256', 'EdDSA'));

ALTER TABLE email_outbox
    ALTER COLUMN recipient TYPE citext,
    ALTER COLUMN next_attempt_at TYPE timestamptz USING pg_temp.ums_time(next_attempt_at),
    ALTER COLUMN lease_until TYPE timestamptz USING pg_temp.ums_time(lease_until),
    ALTER COLUMN created_at TYPE timestamptz USING pg_temp.ums_time(created_at),
    ALTER COLUMN sent_at TYPE timestamptz USING pg_temp.ums_time(sent_at),
    ADD CONSTRAINT email_outbox_status_check CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    ADD CONSTRAINT email_outbox_attempts_check CHECK (attempts >= 0);

ALTER TABLE audit_chain
    ADD CONSTRAINT audit_chain_one_row CHECK (id = 1),
    ADD CONSTRAINT audit_chain_archive_behind_head CHECK (archived_through <= seq);

-- audit_logs is partitioned by occurred_at, and a partition key cannot change its type: the
-- table is built anew beside the old one, its months prepared, and the events copied in seq
-- order. The chain hashes are over the values, not their column types, so they hold.
ALTER TABLE audit_logs RENAME TO audit_logs_v7;
ALTER INDEX audit_logs_pkey RENAME TO audit_logs_v7_pkey;
ALTER INDEX audit_logs_seq_key RENAME TO audit_logs_v7_seq_key;
ALTER INDEX audit_logs_occurred_at RENAME TO audit_logs_v7_occurred_at;
ALTER INDEX audit_logs_user RENAME TO audit_logs_v7_user;
ALTER INDEX audit_logs_action RENAME TO audit_logs_v7_action;
DO $$
DECLARE
    part_name TEXT;
BEGIN
    FOR part_name IN
        SELECT child.relname FROM pg_inherits
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE pg_inherits.inhparent = 'audit_logs_v7'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', part_name, 'v7_' || part_name);
    END LOOP;
END
$$;
DROP FUNCTION audit_logs_ensure_month(BIGINT);
DROP FUNCTION audit_logs_drop_archived_months(BIGINT);

CREATE TABLE audit_logs (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY,
    seq BIGINT NOT NULL,
    occurred_at timestamptz NOT NULL,
    action TEXT NOT NULL,
    success boolean NOT NULL,
    user_id BIGINT,
    actor_ip inet,
    user_agent TEXT,
    resource_type TEXT,
    resource_id TEXT,
    lab_id BIGINT,
    details jsonb NOT NULL CHECK (jsonb_typeof(details) = 'object'),
    request_id TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE UNIQUE INDEX audit_logs_seq_key ON audit_logs (seq, occurred_at);
CREATE INDEX audit_logs_occurred_at ON audit_logs (occurred_at);
CREATE INDEX audit_logs_user ON audit_logs (user_id, occurred_at);
CREATE INDEX audit_logs_action ON audit_logs (action, occurred_at);

CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_append_only();
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only();

CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only();

-- Creates the partition of the month (UTC) holding `at`, unless it exists. A month whose
-- events already sit in the default partition keeps them there.
CREATE FUNCTION audit_logs_ensure_month(at timestamptz) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at, 'UTC');
    part_name TEXT := 'audit_logs_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(part_name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_logs FOR VALUES FROM (%L) TO (%L)',
                   part_name, month_start, month_start + INTERVAL '1 month');
    EXECUTE format('CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only()', part_name);
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'audit_logs: events of % are in the default partition and stay there', part_name;
END
$$;

-- Drops the month partitions that end at or before `before` and hold no event above the
-- archive watermark; returns their names. Only archived months can leave.
CREATE FUNCTION audit_logs_drop_archived_months(before timestamptz) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    through BIGINT := (SELECT archived_through FROM audit_chain WHERE id = 1);
    part_name TEXT;
    month_end timestamptz;
    unarchived BOOLEAN;
BEGIN
    FOR part_name IN
        SELECT child.relname FROM pg_inherits
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE pg_inherits.inhparent = 'audit_logs'::regclass
          AND child.relname ~ '^audit_logs_[0-9]{4}_[0-9]{2}$'
        ORDER BY child.relname
    LOOP
        month_end := (to_date(substr(part_name, 12), 'YYYY_MM')::TIMESTAMP + INTERVAL '1 month')
                     AT TIME ZONE 'UTC';
        CONTINUE WHEN month_end > before;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE seq > $1)', part_name)
            INTO unarchived USING through;
        CONTINUE WHEN unarchived;
        EXECUTE format('DROP TABLE %I', part_name);
        RETURN NEXT part_name;
    END LOOP;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_logs_ensure_month(timestamptz) SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION audit_logs_drop_archived_months(timestamptz) SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
REVOKE ALL ON FUNCTION audit_logs_ensure_month(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_logs_drop_archived_months(timestamptz) FROM PUBLIC;

-- The months the old table had partitions for stay partitions; events that sat in the old
-- default partition get their month's partition now, and this month and the next are ready.
SELECT audit_logs_ensure_month(month) FROM (
    SELECT DISTINCT date_trunc('month', pg_temp.ums_time(occurred_at), 'UTC') AS month
        FROM audit_logs_v7
    UNION SELECT now()
    UNION SELECT date_trunc('month', now(), 'UTC') + INTERVAL '1 month'
) AS months;
INSERT INTO audit_logs (id, seq, occurred_at, action, success, user_id, actor_ip, user_agent,
                        resource_type, resource_id, lab_id, details, request_id, prev_hash, hash)
SELECT id, seq, pg_temp.ums_time(occurred_at), action, success <> 0, user_id,
       pg_temp.ums_inet(actor_ip), user_agent, resource_type, resource_id, lab_id,
       details::jsonb, request_id, prev_hash, hash
FROM audit_logs_v7 ORDER BY seq;
SELECT setval(pg_get_serial_sequence('audit_logs', 'id'),
              GREATEST((SELECT MAX(id) FROM audit_logs), 1));
DROP TABLE audit_logs_v7;
