"""Every exception type, from the live server where a real path produces it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import PASSWORD, free_port, unique
from ums_client import (
    AccountLocked,
    AuthenticationError,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UMSClient,
    UMSError,
    ValidationError,
)


def test_validation_error_carries_the_field_errors(make_client, ums):
    with pytest.raises(ValidationError) as excinfo:
        make_client(ums).register("ab", "not-an-email", "short")
    error = excinfo.value
    assert isinstance(error, UMSError)
    assert error.status == 400
    assert error.code == "validation_failed"
    assert error.title == "Bad Request"
    assert set(error.errors) == {"username", "email", "password"}
    assert all(isinstance(m, list) and m for m in error.errors.values())
    assert error.request_id


def test_conflict_on_duplicate_username_and_email(make_client, new_account, ums):
    account = new_account(login=False)
    client = make_client(ums)
    with pytest.raises(Conflict) as by_name:
        client.register(account.username.upper(), f"{unique()}@example.org", PASSWORD)
    assert by_name.value.status == 409
    with pytest.raises(Conflict) as by_email:
        client.register(unique(), account.user.email.upper(), PASSWORD)
    assert by_email.value.code == "conflict"


def test_wrong_password_and_unknown_user_get_the_same_401(make_client, new_account, ums):
    account = new_account(login=False)
    client = make_client(ums)
    with pytest.raises(AuthenticationError) as wrong:
        client.login(account.username, "not the password")
    with pytest.raises(AuthenticationError) as unknown:
        client.login(unique("ghost"), "not the password")
    assert wrong.value.status == unknown.value.status == 401
    assert (wrong.value.title, wrong.value.detail, wrong.value.code) == (
        unknown.value.title,
        unknown.value.detail,
        unknown.value.code,
    )
    assert client.tokens is None


def test_unauthenticated_call_is_a_401(make_client, ums):
    with pytest.raises(AuthenticationError) as excinfo:
        make_client(ums).me()
    assert excinfo.value.status == 401
    assert excinfo.value.code == "unauthorized"


def test_permission_denied_and_not_found(admin, new_account):
    with pytest.raises(PermissionDenied) as denied:
        new_account().client.create_lab(unique("pd"), "nope")
    assert denied.value.status == 403
    with pytest.raises(NotFound) as missing:
        admin.get_lab(10_000_000)
    assert missing.value.status == 404
    assert missing.value.code == "not_found"


def test_five_wrong_passwords_lock_the_account_until_an_admin_unlocks(
    admin, make_client, new_account, ums
):
    account = new_account(login=False)
    client = make_client(ums)
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            client.login(account.username, "wrong password")
    with pytest.raises(AccountLocked) as locked:
        client.login(account.username, PASSWORD)  # even the right password
    assert locked.value.status == 423
    assert locked.value.code == "account_locked"
    assert locked.value.retry_after is not None and 0 < locked.value.retry_after <= 1800
    assert admin.get_user(account.id).is_locked is True
    locked_now = {user.id for user in admin.list_users(locked=True, per_page=100).items}
    assert account.id in locked_now

    unlocked = admin.unlock_user(account.id)
    assert unlocked.is_locked is False
    assert account.id not in {user.id for user in admin.list_users(locked=True, per_page=100).items}
    assert account.id in {
        user.id for user in admin.list_users(locked=False, q=account.username).items
    }
    assert client.login(account.username, PASSWORD).user.id == account.id


def test_unreachable_server_is_service_unavailable():
    with (
        UMSClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client,
        pytest.raises(ServiceUnavailable) as excinfo,
    ):
        client.health()
    assert excinfo.value.status == 503
    assert excinfo.value.code == "unreachable"
    assert excinfo.value.__cause__ is not None


def test_ip_block_is_rate_limited(pool, make_client):
    """Live 429 from the IP block (20 failures by default; 3 here)."""
    server = pool.named_server("ipblock", UMS_IP_BLOCK_THRESHOLD="3", UMS_LOCKOUT_THRESHOLD="100")
    client = make_client(server)
    statuses = []
    for _ in range(5):
        try:
            client.login(unique("nobody"), "wrong password")
        except RateLimited as exc:
            statuses.append(exc)
        except AuthenticationError:
            statuses.append(401)
    if all(s == 401 for s in statuses):
        pytest.skip("this UMS build does not block IPs yet (no 429 after 5 failures, threshold 3)")
    limited = statuses[-1]
    assert isinstance(limited, RateLimited)
    assert limited.status == 429
    assert limited.retry_after is not None and limited.retry_after > 0


# -- answers no path of the current server produces: a stub speaking the same protocol --------

STUB_ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/api/auth/login": (
        429,
        {"Content-Type": "application/problem+json", "Retry-After": "42"},
        json.dumps(
            {
                "type": "https://ums.dev/problems/too_many_requests",
                "title": "Too Many Requests",
                "status": 429,
                "detail": "Too many requests; slow down.",
                "code": "too_many_requests",
            }
        ).encode(),
    ),
    "/api/auth/me": (
        503,
        {"Content-Type": "application/problem+json", "Retry-After": "5"},
        json.dumps(
            {
                "type": "https://ums.dev/problems/unavailable",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "The database is unavailable.",
                "code": "unavailable",
            }
        ).encode(),
    ),
    "/health": (502, {"Content-Type": "text/html"}, b"<h1>Bad gateway</h1>"),
}


class _Stub(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        status, headers, body = STUB_ANSWERS[self.path]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rate_limited_from_a_429(stub):
    with UMSClient(stub) as client, pytest.raises(RateLimited) as excinfo:
        client.login("someone", "password")
    assert (excinfo.value.status, excinfo.value.retry_after) == (429, 42.0)
    assert excinfo.value.code == "too_many_requests"


def test_service_unavailable_from_a_503(stub):
    with UMSClient(stub) as client, pytest.raises(ServiceUnavailable) as excinfo:
        client.me()
    assert (excinfo.value.status, excinfo.value.retry_after) == (503, 5.0)
    assert excinfo.value.detail == "The database is unavailable."


def test_non_problem_error_body_still_raises_ums_error(stub):
    with UMSClient(stub) as client, pytest.raises(UMSError) as excinfo:
        client.health()
    assert type(excinfo.value) is UMSError
    assert excinfo.value.status == 502
    assert excinfo.value.title == "Bad Gateway"
    assert "Bad gateway" in (excinfo.value.detail or "")
