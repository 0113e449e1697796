-- audit_logs is append-only: no UPDATE ever, and DELETE only of events already archived.
CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;
CREATE TRIGGER audit_logs_no_delete BEFORE DELETE ON audit_logs
WHEN OLD.seq > (SELECT archived_through FROM audit_chain WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only');
END;
