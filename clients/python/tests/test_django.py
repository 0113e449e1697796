"""The Django integration, driven through django.test.Client against the live server.

The portal (tests/portal) has a login view using the UMS backend, a lab page behind
``require_lab_access``, an admin page and a logout view; settings are in conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings

from conftest import ADMIN_PASSWORD, ADMIN_USERNAME, PASSWORD, UMSServer, unique, wait_until_expired
from ums_client import AuthenticationError, MemoryTokenStore, TokenPair, UMSClient
from ums_client.django.store import SESSION_KEY, SessionTokenStore


@pytest.fixture(scope="session")
def django_db() -> None:
    call_command("migrate", verbosity=0, interactive=False)


@pytest.fixture
def portal(ums, django_db) -> Iterator[UMSServer]:
    with override_settings(UMS_BASE_URL=ums.url):
        yield ums


def browser_login(username: str, password: str = PASSWORD) -> Client:
    browser = Client()
    response = browser.post("/login/", {"username": username, "password": password})
    assert response.status_code == 302, response.content
    return browser


def session_tokens(browser: Client) -> TokenPair | None:
    data = browser.session.get(SESSION_KEY)
    return TokenPair(**data) if data else None


def test_login_mirrors_the_user_and_keeps_tokens_in_the_session(portal, new_account):
    account = new_account(login=False, first_name="Rosalind", last_name="Franklin")
    browser = browser_login(account.username)

    local = get_user_model().objects.get(username=account.username)
    assert (local.email, local.first_name, local.last_name) == (
        account.user.email,
        "Rosalind",
        "Franklin",
    )
    assert local.is_active and not local.is_staff and not local.is_superuser
    assert not local.has_usable_password()  # only UMS checks passwords

    tokens = session_tokens(browser)
    assert tokens is not None and tokens.refresh_token
    with UMSClient(portal.url, token_store=MemoryTokenStore(tokens)) as client:
        assert client.me().id == account.id  # the session holds this user's live UMS tokens

    response = browser.get("/whoami/")
    assert response.status_code == 200
    assert response.json() == {"username": account.username}


def test_mirrored_user_follows_changes_in_ums(portal, admin, new_account):
    account = new_account(login=False)
    browser_login(account.username)
    admin.update_user(account.id, is_admin=True, first_name="Promoted")

    browser_login(account.user.email)  # by email this time: the mirror is keyed by username
    local = get_user_model().objects.get(username=account.username)
    assert local.is_staff and local.is_superuser
    assert local.first_name == "Promoted"
    assert get_user_model().objects.filter(username__iexact=account.username).count() == 1


def test_wrong_password_and_locked_account(portal, new_account):
    account = new_account(login=False)
    browser = Client()
    for _ in range(5):
        response = browser.post("/login/", {"username": account.username, "password": "nope-nope"})
        assert response.status_code == 401
    response = browser.post("/login/", {"username": account.username, "password": PASSWORD})
    assert response.status_code == 423
    assert b"locked" in response.content
    assert session_tokens(browser) is None
    assert browser.get("/whoami/").status_code == 302


def test_anonymous_is_sent_to_the_login_page(portal):
    response = Client().get("/labs/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/labs/"


def test_lab_page_member_sees_outsider_gets_403(portal, admin, new_account):
    lab = admin.create_lab(unique("dj"), "Django lab")
    member, outsider = new_account(login=False), new_account(login=False)
    admin.add_member(lab.id, member.id, "viewer")

    member_browser = browser_login(member.username)
    response = member_browser.get(f"/labs/{lab.id}/")
    assert response.status_code == 200
    assert response.json() == {"lab": lab.code, "role": "viewer"}
    assert member_browser.get("/labs/").json() == {"labs": [lab.code]}

    outsider_browser = browser_login(outsider.username)
    assert outsider_browser.get(f"/labs/{lab.id}/").status_code == 403
    assert outsider_browser.get("/labs/10000000/").status_code == 403


def test_lab_roles_rank_viewer_member_lab_admin(portal, admin, new_account):
    lab = admin.create_lab(unique("rank"), "Ranked lab")
    account = new_account(login=False)
    admin.add_member(lab.id, account.id, "member")
    browser = browser_login(account.username)

    assert browser.get(f"/labs/{lab.id}/").status_code == 200  # member >= viewer
    assert browser.get(f"/labs/{lab.id}/manage/").status_code == 403  # member < lab_admin
    admin.set_member_role(lab.id, account.id, "lab_admin")
    response = browser.get(f"/labs/{lab.id}/manage/")
    assert response.status_code == 200
    assert response.json() == {"members": [account.username]}

    root = browser_login(ADMIN_USERNAME, ADMIN_PASSWORD)  # system admins pass every check
    assert root.get(f"/labs/{lab.id}/manage/").status_code == 200
    assert root.get(f"/labs/{lab.id}/").json()["role"] == "admin"


def test_admin_required(portal, new_account):
    root = browser_login(ADMIN_USERNAME, ADMIN_PASSWORD)
    response = root.get("/admin-only/")
    assert response.status_code == 200
    assert response.json()["users"] >= 1
    assert browser_login(new_account(login=False).username).get("/admin-only/").status_code == 403
    assert Client().get("/admin-only/").status_code == 302


def test_logout_revokes_the_ums_session(portal, new_account):
    account = new_account(login=False)
    browser = browser_login(account.username)
    tokens = session_tokens(browser)

    response = browser.post("/logout/")
    assert response.status_code == 302
    assert session_tokens(browser) is None
    assert browser.get("/whoami/").status_code == 302  # logged out of Django too
    with UMSClient(portal.url) as client, pytest.raises(AuthenticationError):
        client.refresh(tokens.refresh_token)  # the refresh token stopped working


def test_session_revoked_in_ums_logs_out_of_django(portal, new_account):
    account = new_account(login=False)
    browser = browser_login(account.username)
    with UMSClient(portal.url, token_store=MemoryTokenStore(session_tokens(browser))) as twin:
        twin.logout()  # e.g. the user ended the session from another device

    response = browser.get("/labs/")  # the view's UMS call is refused
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert browser.get("/whoami/").status_code == 302


def test_middleware_refreshes_expiring_tokens(ums_short, django_db, new_account):
    account = new_account(server=ums_short, login=False)
    with override_settings(UMS_BASE_URL=ums_short.url, UMS_REFRESH_LEEWAY=0):
        browser = browser_login(account.username)
        before = session_tokens(browser)
        wait_until_expired(ums_short, before.access_token)

        response = browser.get("/whoami/")  # the view itself makes no UMS call
        assert response.status_code == 200
        after = session_tokens(browser)
        assert after.access_token != before.access_token
        assert after.refresh_token != before.refresh_token
        assert browser.get("/labs/").status_code == 200  # the refreshed tokens work


def test_middleware_logs_out_when_the_refresh_is_refused(ums_short, django_db, new_account):
    account = new_account(server=ums_short, login=False)
    with override_settings(UMS_BASE_URL=ums_short.url, UMS_REFRESH_LEEWAY=0):
        browser = browser_login(account.username)
        tokens = session_tokens(browser)
        with UMSClient(ums_short.url) as other:
            other.refresh(tokens.refresh_token)  # spends the session's refresh token
        wait_until_expired(ums_short, tokens.access_token)

        response = browser.get("/whoami/")
        assert response.status_code == 302
        assert session_tokens(browser) is None


def test_two_requests_of_one_session_do_not_both_refresh(ums_short, django_db, new_account):
    """Both requests loaded the session before either refreshed: the second must adopt the
    first one's tokens, since replaying the spent refresh token would revoke the UMS session."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    from ums_client.django.middleware import UMSTokenMiddleware

    account = new_account(server=ums_short, login=False)
    with override_settings(UMS_BASE_URL=ums_short.url, UMS_REFRESH_LEEWAY=0):
        browser = browser_login(account.username)
        before = session_tokens(browser)
        session_key = browser.session.session_key
        requests = []
        for _ in range(2):
            request = RequestFactory().get("/whoami/")
            request.session = SessionStore(session_key)
            assert SessionTokenStore(request.session).load() == before  # loaded now, stale later
            requests.append(request)
        middleware = UMSTokenMiddleware(lambda request: None)

        assert middleware._refresh(requests[0], before) is True
        assert middleware._refresh(requests[1], before) is False

        first, second = (SessionTokenStore(r.session).load() for r in requests)
        assert first == second
        assert first.refresh_token != before.refresh_token
        with UMSClient(ums_short.url, token_store=MemoryTokenStore(second)) as client:
            assert client.me().id == account.id  # the UMS session survived
