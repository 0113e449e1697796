"""Credential, audit and security routes, which came to the server after the rest.

Each test is skipped while a probe of its route answers 404 (``route_served`` in
conftest.py), and runs by itself once the server has the route. Tokens sent by email are read
from the server's log, where UMS writes its emails when no SMTP server is configured.
"""

from __future__ import annotations

import pytest

from conftest import PASSWORD, route_served, unique  # noqa: F401 - route_served: in skipif strings
from ums_client import (
    AccountLocked,
    AuditEvent,
    AuthenticationError,
    LoginAttempt,
    Page,
    PermissionDenied,
    UMSClient,
    ValidationError,
)


def served(method: str, path: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        f"not route_served({method!r}, {path!r})",
        reason=f"{method} {path} is not served yet (404 probe)",
    )


needs_forgot_password = served("POST", "/api/auth/forgot-password")
needs_reset_password = served("POST", "/api/auth/reset-password")
needs_change_password = served("POST", "/api/auth/change-password")
needs_change_email = served("POST", "/api/auth/change-email")
needs_verify_email = served("POST", "/api/auth/verify-email")
needs_audit_logs = served("GET", "/api/audit-logs")
needs_login_attempts = served("GET", "/api/security/login-attempts")


@needs_forgot_password
def test_forgot_password_answers_alike_for_known_and_unknown_emails(make_client, new_account, ums):
    account = new_account(login=False)
    client = make_client(ums)
    assert client.forgot_password(account.user.email) is None
    assert client.forgot_password(f"{unique('nobody')}@example.org") is None


@needs_reset_password
def test_reset_password_with_an_unknown_token_is_a_validation_error(make_client, ums):
    with pytest.raises(ValidationError):
        make_client(ums).reset_password("not-a-real-token", "Another-Strong-Pass-91")


@needs_forgot_password
@needs_reset_password
def test_password_reset_flow_unlocks_and_revokes_sessions(make_client, new_account, ums):
    account = new_account()
    client = make_client(ums)
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            client.login(account.username, "wrong password")
    with pytest.raises(AccountLocked):
        client.login(account.username, PASSWORD)

    client.forgot_password(account.user.email)
    token = ums.wait_for_token(account.user.email, "Reset your password")
    with pytest.raises(ValidationError) as weak:
        client.reset_password(token, "short")
    assert "new_password" in weak.value.errors
    new_password = "Another-Strong-Pass-91"
    assert client.reset_password(token, new_password) is None  # the weak try left it usable

    with pytest.raises(AuthenticationError):
        account.client.me()  # all sessions revoked
    assert client.login(account.username, new_password).user.id == account.id  # unlocked
    with pytest.raises(ValidationError):
        client.reset_password(token, "Yet-Another-Pass-77")  # spent


@needs_verify_email
def test_verify_email_with_an_unknown_token_is_a_validation_error(make_client, ums):
    with pytest.raises(ValidationError):
        make_client(ums).verify_email("not-a-real-token")


@needs_verify_email
def test_welcome_link_verifies_the_email(new_account, ums):
    account = new_account()
    assert account.user.email_verified is False
    token = ums.wait_for_token(account.user.email, "Welcome")
    assert account.client.verify_email(token) is None
    assert account.client.me().email_verified is True


@needs_change_password
def test_change_password_checks_the_current_one(new_account):
    account = new_account()
    with pytest.raises(ValidationError) as excinfo:
        account.client.change_password("not my password", "Another-Strong-Pass-91")
    assert "current_password" in excinfo.value.errors


@needs_change_password
def test_change_password_revokes_other_sessions(make_client, new_account, ums):
    account = new_account()
    other_device = make_client(ums)
    other_device.login(account.username, PASSWORD)
    new_password = "Another-Strong-Pass-91"

    assert account.client.change_password(PASSWORD, new_password) is None
    assert account.client.me().id == account.id  # this session stays
    with pytest.raises(AuthenticationError):
        other_device.me()
    with pytest.raises(AuthenticationError):
        make_client(ums).login(account.username, PASSWORD)
    assert make_client(ums).login(account.username, new_password).user.id == account.id


@needs_change_email
@needs_verify_email
def test_change_email_switches_after_verification(new_account, ums):
    account = new_account()
    new_email = f"{unique('new')}@example.org"
    with pytest.raises(ValidationError) as excinfo:
        account.client.change_email(new_email, "not my password")
    assert "password" in excinfo.value.errors

    assert account.client.change_email(new_email, PASSWORD) is None
    assert account.client.me().email == account.user.email  # not before verification
    token = ums.wait_for_token(new_email, "Verify your email address")
    account.client.verify_email(token)
    me = account.client.me()
    assert (me.email, me.email_verified) == (new_email, True)
    ums.wait_for_mail(account.user.email, "email address was changed")  # the old one is told


@needs_audit_logs
def test_audit_logs_list_and_export(admin, new_account):
    account = new_account()
    page = admin.list_audit_logs(action="auth.login", user_id=account.id)
    assert isinstance(page, Page)
    assert page.total >= 1
    assert all(isinstance(e, AuditEvent) and e.action == "auth.login" for e in page)
    assert all(e.user_id == account.id for e in page)
    csv = admin.export_audit_logs("csv", user_id=account.id)
    assert b"auth.login" in csv
    with pytest.raises(PermissionDenied):
        account.client.list_audit_logs()


@needs_login_attempts
def test_login_attempts_record_failures(admin, new_account, ums):
    account = new_account(login=False)
    with UMSClient(ums.url) as client, pytest.raises(AuthenticationError):
        client.login(account.username, "wrong password")
    page = admin.list_login_attempts(username=account.username, success=False)
    assert page.total == 1
    attempt = page.items[0]
    assert isinstance(attempt, LoginAttempt)
    assert (attempt.username, attempt.success, attempt.ip) == (account.username, False, "127.0.0.1")
    with pytest.raises(PermissionDenied):
        new_account().client.list_login_attempts()
