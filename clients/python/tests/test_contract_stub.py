"""Methods for routes the server does not serve yet, checked against the contract.

A mock transport records what the client sends and answers with contract-shaped bodies, so
the request (method, path, query, body) and the parsing of the answer are pinned down now;
test_pending_routes.py runs the same methods against the real server once it has the routes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest

from ums_client import AuditEvent, LoginAttempt, MemoryTokenStore, TokenPair, UMSClient

EVENT = {
    "id": 7,
    "occurred_at": "2026-01-02T03:04:05.678Z",
    "action": "auth.login",
    "success": True,
    "user_id": 3,
    "actor_ip": "10.0.0.1",
    "user_agent": "pytest",
    "resource_type": "session",
    "resource_id": "abc",
    "lab_id": None,
    "details": {"method": "password"},
    "request_id": "req-1",
}
ATTEMPT = {
    "id": 9,
    "username": "alice",
    "ip": "10.0.0.2",
    "user_agent": "pytest",
    "success": False,
    "attempted_at": "2026-01-02T03:04:05.000Z",
}
ANSWERS: dict[tuple[str, str], httpx.Response] = {
    ("POST", "/api/auth/forgot-password"): httpx.Response(202, json={"detail": "sent if known"}),
    ("POST", "/api/auth/reset-password"): httpx.Response(200, json={"detail": "changed"}),
    ("POST", "/api/auth/change-password"): httpx.Response(200, json={"detail": "changed"}),
    ("POST", "/api/auth/change-email"): httpx.Response(202, json={"detail": "verify"}),
    ("POST", "/api/auth/verify-email"): httpx.Response(200, json={"detail": "verified"}),
}


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key == ("GET", "/api/audit-logs"):
            if request.url.params.get("format") == "csv":
                return httpx.Response(200, content=b"id,action\n7,auth.login\n")
            return httpx.Response(
                200, json={"items": [EVENT], "total": 1, "page": 1, "per_page": 20, "pages": 1}
            )
        if key == ("GET", "/api/security/login-attempts"):
            return httpx.Response(
                200, json={"items": [ATTEMPT], "total": 1, "page": 1, "per_page": 5, "pages": 1}
            )
        return ANSWERS[key]

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self) -> object:
        return json.loads(self.last.content)


@pytest.fixture
def recorded():
    recorder = Recorder()
    store = MemoryTokenStore(TokenPair("the-access-token", "the-refresh-token"))
    with UMSClient(
        "http://ums.test", token_store=store, transport=httpx.MockTransport(recorder)
    ) as client:
        yield client, recorder


def test_anonymous_credential_calls(recorded):
    client, rec = recorded
    assert client.forgot_password("a@example.org") is None
    assert rec.body() == {"email": "a@example.org"}
    assert "authorization" not in rec.last.headers

    client.reset_password("tok", "New-Pass-123")
    assert (rec.last.url.path, rec.body()) == (
        "/api/auth/reset-password",
        {"token": "tok", "new_password": "New-Pass-123"},
    )
    client.verify_email("vtok")
    assert (rec.last.url.path, rec.body()) == ("/api/auth/verify-email", {"token": "vtok"})


def test_authenticated_credential_calls(recorded):
    client, rec = recorded
    client.change_password("old", "new-Pass-123")
    assert rec.last.headers["authorization"] == "Bearer the-access-token"
    assert rec.body() == {"current_password": "old", "new_password": "new-Pass-123"}
    client.change_email("b@example.org", "pw")
    assert rec.last.url.path == "/api/auth/change-email"
    assert rec.body() == {"new_email": "b@example.org", "password": "pw"}


def test_audit_logs_query_and_parsing(recorded):
    client, rec = recorded
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    page = client.list_audit_logs(action="auth.login", success=True, from_=since, user_id=3, page=1)
    assert dict(rec.last.url.params) == {
        "action": "auth.login",
        "success": "true",
        "from": "2026-01-01T00:00:00.000Z",
        "user_id": "3",
        "page": "1",
    }
    assert page.total == 1
    event = page.items[0]
    assert isinstance(event, AuditEvent)
    assert event.occurred_at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    assert (event.action, event.resource_type, event.details) == (
        "auth.login",
        "session",
        {"method": "password"},
    )

    exported = client.export_audit_logs("csv", to="2026-02-01T00:00:00Z")
    assert exported == b"id,action\n7,auth.login\n"
    assert dict(rec.last.url.params) == {"format": "csv", "to": "2026-02-01T00:00:00Z"}


def test_login_attempts_query_and_parsing(recorded):
    client, rec = recorded
    page = client.list_login_attempts(username="alice", success=False, per_page=5)
    assert dict(rec.last.url.params) == {"username": "alice", "success": "false", "per_page": "5"}
    assert page.items == (
        LoginAttempt(
            id=9,
            username="alice",
            ip="10.0.0.2",
            user_agent="pytest",
            success=False,
            attempted_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        ),
    )
