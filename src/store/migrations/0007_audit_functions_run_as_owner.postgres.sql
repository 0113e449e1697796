-- `serve` may run as a role that owns nothing (DML grants only), with `migrate` as the owner:
-- then nobody holding the service's credentials can disable the append-only triggers or
-- truncate the trail. Preparing and dropping monthly partitions needs the owner's rights,
-- so those two functions run with them (SECURITY DEFINER), with a fixed search path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION audit_logs_ensure_month(BIGINT) SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION audit_logs_drop_archived_months(BIGINT) SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
REVOKE ALL ON FUNCTION audit_logs_ensure_month(BIGINT) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_logs_drop_archived_months(BIGINT) FROM PUBLIC;
