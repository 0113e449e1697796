-- The auth cache of every instance (store/auth_cache.rs) learns of each change to an account,
-- its sessions or its labs, whoever makes it: another instance, the command line, a hand in psql. The
-- notification carries the account's id and is delivered when the change commits (and not at
-- all when it rolls back); notifications of one transaction with the same id arrive once.
CREATE FUNCTION ums_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    account BIGINT;
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        account := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSE
        account := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;
    END IF;
    PERFORM pg_notify('ums_auth', account::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER users_auth_changed AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION ums_auth_changed();
-- A refresh touches last_used_at only: nothing the cache holds.
CREATE TRIGGER sessions_auth_changed AFTER UPDATE ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
        OR OLD.expires_at IS DISTINCT FROM NEW.expires_at OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION ums_auth_changed();
CREATE TRIGGER sessions_auth_deleted AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION ums_auth_changed();
CREATE TRIGGER lab_memberships_auth_changed AFTER INSERT OR UPDATE OR DELETE ON lab_memberships
    FOR EACH ROW EXECUTE FUNCTION ums_auth_changed();

-- A lab's change (its name, whether it is active, whether it requires a second factor)
-- concerns each of its members.
CREATE FUNCTION ums_lab_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    member BIGINT;
BEGIN
    FOR member IN SELECT user_id FROM lab_memberships WHERE lab_id = OLD.id LOOP
        PERFORM pg_notify('ums_auth', member::text);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER labs_auth_changed AFTER UPDATE OR DELETE ON labs
    FOR EACH ROW EXECUTE FUNCTION ums_lab_changed();
