"""The Django integration, driven through django.test.Client against the live server.

The portal (tests/portal) has a login view using the UMS backend, a lab page behind
``require_lab_access``, an admin page and a logout view; settings are in conftest.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlencode

import jwt
import pyotp
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client, override_settings

from conftest import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ISSUER,
    NEW_TERMS,
    PASSWORD,
    PRIVACY,
    SIGN_IN_CODE_SUBJECT,
    TERMS,
    AuthenticatorApp,
    UMSServer,
    enrol_totp,
    not_the_code,
    sign_in_code,
    unique,
    wait_until_expired,
)
from ums_client import (
    AuthenticationError,
    InvalidToken,
    MemoryTokenStore,
    TokenPair,
    UMSClient,
)
from ums_client.django import get_verifier
from ums_client.django.mfa import PENDING_KEY
from ums_client.django.models import UmsIdentity
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

    browser_login(account.user.email)  # by email this time: the mirror is keyed by UMS id
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


# -- security review: local users are linked by UMS id, not username -----------------------


def local_fields(user) -> tuple:
    return (user.pk, user.username, user.email, user.first_name, user.is_staff, user.is_active)


@pytest.mark.parametrize("fate", ["deleted", "renamed"])
def test_reused_username_gets_its_own_local_user(portal, admin, new_account, make_client, fate):
    """A's UMS username goes to someone else (A deleted or renamed): B logging in under it must
    get a local user of B's own, and A's row (A's permissions, objects, history) stays A's."""
    first = new_account(login=False, first_name="Ada")
    browser_login(first.username)
    users = get_user_model().objects
    row_a = users.get(username=first.username)
    before = local_fields(row_a)

    if fate == "deleted":
        admin.delete_user(first.id)
    else:
        admin.update_user(first.id, username=unique("renamed"))
    newcomer = make_client(portal).register(first.username, f"{unique()}@example.org", PASSWORD)
    assert newcomer.id != first.id and newcomer.username == first.username

    browser = browser_login(first.username)
    row_b = users.get(username=browser.get("/whoami/").json()["username"])
    assert row_b.pk != row_a.pk  # not A's row
    row_a.refresh_from_db()
    assert local_fields(row_a) == before  # untouched
    assert row_b.username == f"{first.username}-2"  # the name was taken locally
    assert row_b.email == newcomer.email and row_b.first_name == ""
    assert UmsIdentity.objects.get(user=row_a).ums_id == first.id
    assert UmsIdentity.objects.get(user=row_b).ums_id == newcomer.id

    if fate == "renamed":  # A is still A, under the new name
        renamed = admin.get_user(first.id).username
        browser_login(renamed)
        row_a.refresh_from_db()
        assert row_a.username == renamed and row_a.pk == before[0]
        assert users.filter(ums_identity__ums_id=first.id).count() == 1


def test_local_account_with_the_same_username_is_not_taken_over(portal):
    """A purely local account (say, one made with createsuperuser) named like a UMS user."""
    username = unique()
    local = get_user_model().objects.create_user(username, "local@example.org", "local-pass")
    local.is_superuser = True
    local.save()
    with UMSClient(portal.url) as client:
        remote = client.register(username, f"{username}@example.org", PASSWORD)

    browser = browser_login(remote.username)
    mirror = get_user_model().objects.get(username=browser.get("/whoami/").json()["username"])
    assert mirror.pk != local.pk and mirror.username == f"{username}-2"
    assert not mirror.is_superuser and not mirror.has_usable_password()
    local.refresh_from_db()
    assert local.is_superuser and local.check_password("local-pass")
    assert local.email == "local@example.org"
    assert UmsIdentity.objects.get(user=mirror).ums_id == remote.id
    assert not UmsIdentity.objects.filter(user=local).exists()


def test_unlinked_mirrors_are_adopted_only_when_asked(portal, new_account):
    """Upgrading from the username-keyed mirror: its rows have no link and unusable passwords."""
    users = get_user_model().objects
    old, other = new_account(login=False), new_account(login=False)
    for account in (old, other):
        legacy = users.create_user(account.username, "old@example.org")
        assert not legacy.has_usable_password()

    browser_login(other.username)  # default: no adoption
    assert UmsIdentity.objects.get(ums_id=other.id).user.username == f"{other.username}-2"

    with override_settings(UMS_ADOPT_UNLINKED_USERS=True):
        browser_login(old.username)
    adopted = UmsIdentity.objects.get(ums_id=old.id).user
    assert adopted.username == old.username
    assert adopted.email == old.user.email  # now synced from UMS


def test_the_link_table_migration_matches_the_model(django_db):
    call_command("makemigrations", "ums_client", check=True, dry_run=True, verbosity=0)


# -- security review: admin rights are checked with UMS, not read from the token -----------


def test_admin_demoted_in_ums_is_refused_at_once(portal, admin, new_account):
    """The access token says ``is_admin`` for its whole hour; UMS knows better (cache TTL 0)."""
    account = new_account(login=False)
    admin.update_user(account.id, is_admin=True)
    browser = browser_login(account.username)  # a token whose is_admin claim is true
    assert browser.get("/admin-only/settings/").status_code == 200
    local = get_user_model().objects.get(username=account.username)
    assert local.is_staff and local.is_superuser

    admin.update_user(account.id, is_admin=False)  # by another admin
    assert browser.get("/admin-only/settings/").status_code == 403
    assert browser.get("/admin-only/").status_code == 403
    local.refresh_from_db()
    assert not local.is_staff and not local.is_superuser  # the local flags followed
    assert browser.get("/whoami/").status_code == 200  # still logged in, just no admin


def test_admin_promoted_in_ums_is_let_in_at_once(portal, admin, new_account):
    account = new_account(login=False)
    browser = browser_login(account.username)  # a token whose is_admin claim is false
    assert browser.get("/admin-only/settings/").status_code == 403
    admin.update_user(account.id, is_admin=True)
    assert browser.get("/admin-only/settings/").status_code == 200


def test_admin_check_needs_a_live_ums_session(portal, admin, new_account):
    account = new_account(login=False)
    admin.update_user(account.id, is_admin=True)
    browser = browser_login(account.username)
    with UMSClient(portal.url, token_store=MemoryTokenStore(session_tokens(browser))) as twin:
        twin.logout()  # the session ends in UMS; its access token still says is_admin
    response = browser.get("/admin-only/settings/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_admin_check_is_cached_for_the_configured_ttl(portal, admin, new_account):
    account = new_account(login=False)
    admin.update_user(account.id, is_admin=True)
    browser = browser_login(account.username)
    cache.clear()
    with override_settings(UMS_ADMIN_CACHE_TTL=60):
        assert browser.get("/admin-only/settings/").status_code == 200
        admin.update_user(account.id, is_admin=False)
        assert browser.get("/admin-only/settings/").status_code == 200  # the cached answer
        cache.clear()  # as when the TTL has passed
        assert browser.get("/admin-only/settings/").status_code == 403


# -- security review: the login view's next is checked (no open redirect) ------------------


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "https:evil.example",
        "/\\evil.example/",
        "javascript:alert(1)",
        "http://testserver.evil.example/",
    ],
)
@pytest.mark.parametrize("where", ["query", "form"])
def test_login_refuses_a_next_off_the_site(portal, new_account, target, where):
    account = new_account(login=False)
    form = {"username": account.username, "password": PASSWORD}
    if where == "query":
        response = Client().post(f"/login/?{urlencode({'next': target})}", form)
    else:
        response = Client().post("/login/", {**form, "next": target})
    assert response.status_code == 302
    assert response["Location"] == "/whoami/"  # settings.LOGIN_REDIRECT_URL


@pytest.mark.parametrize("target", ["/labs/", "/labs/?page=2", "http://testserver/labs/"])
def test_login_follows_a_next_on_the_site(portal, new_account, target):
    account = new_account(login=False)
    form = {"username": account.username, "password": PASSWORD}
    response = Client().post(f"/login/?{urlencode({'next': target})}", form)
    assert response.status_code == 302
    assert response["Location"] == target


# -- security review: the audience of access tokens ---------------------------------------


def test_get_verifier_checks_the_audience_setting(audience_servers, django_db):
    portal_ums, billing_ums, _ = audience_servers
    account_name = unique()
    with UMSClient(portal_ums.url) as client:
        client.register(account_name, f"{account_name}@example.org", PASSWORD)
    for_billing = UMSClient(billing_ums.url)
    with for_billing:
        billing_token = for_billing.login(account_name, PASSWORD).access_token
    with override_settings(UMS_BASE_URL=portal_ums.url, UMS_ISSUER=ISSUER):
        browser = browser_login(account_name)  # the integration works with audience tokens
        assert browser.get("/labs/").status_code == 200
        token = session_tokens(browser).access_token
        with override_settings(UMS_JWT_AUDIENCE="lab-portal"):
            assert get_verifier().verify(token)["aud"] == "lab-portal"
            with pytest.raises(InvalidToken, match="audience"):
                get_verifier().verify(billing_token)
        with pytest.raises(InvalidToken, match="audience"):
            get_verifier().verify(token)  # no audience configured: a token naming one is refused


# -- second factors: the two-step login, the mfa decorator, step-up -----------------------


def session_amr(browser: Client) -> list[str]:
    tokens = session_tokens(browser)
    assert tokens is not None
    return list(jwt.decode(tokens.access_token, options={"verify_signature": False})["amr"])


def test_two_step_login_keeps_the_mfa_token_never_the_password(portal, new_account):
    account = new_account()
    app, _ = enrol_totp(account.client)
    browser = Client()
    login_url = f"/login/?{urlencode({'next': '/labs/'})}"

    response = browser.post(login_url, {"username": account.username, "password": PASSWORD})
    assert response.status_code == 200  # the second form
    assert b"second factor" in response.content
    assert b"value=totp" in response.content and b"value=recovery_code" in response.content
    pending = browser.session[PENDING_KEY]
    assert pending["mfa_token"] and pending["methods"] == ["totp", "recovery_code"]
    assert PASSWORD not in repr(dict(browser.session.items()))  # the password is not kept
    assert session_tokens(browser) is None
    assert browser.get("/whoami/").status_code == 302  # not logged in yet

    response = browser.post(login_url, {"mfa_method": "totp", "mfa_code": app.wrong_code()})
    assert response.status_code == 401
    assert b"2 tries left" in response.content
    assert session_tokens(browser) is None

    response = browser.post(login_url, {"mfa_method": "totp", "mfa_code": app.code()})
    assert response.status_code == 302
    assert response["Location"] == "/labs/"  # next survived the second step
    assert PENDING_KEY not in browser.session
    assert session_amr(browser) == ["pwd", "otp", "mfa"]
    assert browser.get("/whoami/").json() == {"username": account.username}
    assert browser.get("/labs/").status_code == 200  # the session's UMS tokens work
    assert browser.get("/mfa-only/").json() == {"amr": ["pwd", "otp", "mfa"]}


def test_the_second_step_is_dropped_after_three_wrong_answers(portal, new_account):
    account = new_account()
    _, codes = enrol_totp(account.client)
    browser = Client()
    form = {"username": account.username, "password": PASSWORD}
    wrong = {"mfa_method": "recovery_code", "mfa_code": "aaaa-aaaa-aaaa-aaaa"}

    assert browser.post("/login/", form).status_code == 200
    assert b"2 tries left" in browser.post("/login/", wrong).content
    assert b"1 tries left" in browser.post("/login/", wrong).content
    response = browser.post("/login/", wrong)  # the third: UMS has killed the token
    assert response.status_code == 401
    assert response.content == b"sign in again"
    assert PENDING_KEY not in browser.session
    right = {"mfa_method": "recovery_code", "mfa_code": codes[0]}
    assert browser.post("/login/", right).content == b"sign in again"

    assert browser.post("/login/", form).status_code == 200  # a new token
    assert browser.post("/login/", right).status_code == 302
    assert session_amr(browser) == ["pwd", "otp", "mfa"]


def test_mfa_decorator_refuses_a_password_session_until_it_steps_up(portal, new_account):
    account = new_account()
    browser = browser_login(account.username)  # the password alone: no factor yet
    app, codes = enrol_totp(account.client)

    assert session_amr(browser) == ["pwd"]
    assert browser.get("/mfa-only/").status_code == 403
    assert Client().get("/mfa-only/")["Location"] == "/login/?next=/mfa-only/"
    with override_settings(UMS_STEP_UP_URL="/step-up/"):
        response = browser.get("/mfa-only/")
        assert response.status_code == 302
        assert response["Location"] == "/step-up/?next=/mfa-only/"

    step_up_url = "/step-up/?next=/mfa-only/"
    response = browser.post(step_up_url, {"method": "totp", "code": app.wrong_code()})
    assert response.status_code == 401
    assert browser.get("/whoami/").status_code == 200  # a refused answer does not log out
    assert browser.get("/mfa-only/").status_code == 403

    response = browser.post(step_up_url, {"method": "recovery_code", "code": codes[0]})
    assert response.status_code == 302
    assert response["Location"] == "/mfa-only/"
    assert browser.get("/mfa-only/").json() == {"amr": ["pwd", "otp", "mfa"]}


def test_an_admin_enrols_at_the_django_login_when_the_policy_is_on(pool, django_db):
    server = pool.start(UMS_REQUIRE_MFA_FOR_ADMINS="true")
    with override_settings(UMS_BASE_URL=server.url):
        browser = Client()
        response = browser.post("/login/", {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
        assert response.status_code == 200
        assert b"enrol an authenticator app" in response.content and b"<svg" in response.content
        assert browser.session[PENDING_KEY]["kind"] == "mfa_enrollment_required"
        secret = re.search(rb"secret=([A-Z2-7]+)", response.content).group(1).decode()
        app = AuthenticatorApp(pyotp.TOTP(secret))

        response = browser.post("/login/", {"mfa_method": "totp", "mfa_code": app.code()})
        assert response.status_code == 200
        codes = response.content.decode().removeprefix("recovery codes: ").split()
        assert len(codes) == 10  # shown once
        assert session_amr(browser) == ["pwd", "otp", "mfa"]
        assert browser.get("/admin-only/settings/").status_code == 200


def test_a_lab_requiring_mfa_sends_a_password_session_to_step_up(portal, admin, new_account):
    lab = admin.create_lab(unique("djmfa"), "Second factor lab")
    admin.update_lab(lab.id, require_mfa=True)
    account = new_account()
    admin.add_member(lab.id, account.id, "viewer")
    browser = browser_login(account.username)  # the password alone
    assert browser.get(f"/labs/{lab.id}/").status_code == 403  # no factor at all
    _, codes = enrol_totp(account.client)

    assert browser.get(f"/labs/{lab.id}/").status_code == 403  # a factor, not proven here
    with override_settings(UMS_STEP_UP_URL="/step-up/"):
        response = browser.get(f"/labs/{lab.id}/")
        assert response.status_code == 302
        assert response["Location"] == f"/step-up/?next=/labs/{lab.id}/"
    response = browser.post(response["Location"], {"method": "recovery_code", "code": codes[0]})
    assert response["Location"] == f"/labs/{lab.id}/"
    assert browser.get(f"/labs/{lab.id}/").json() == {"lab": lab.code, "role": "viewer"}


# -- adaptive sign-in: the emailed code, the browser's device id and headers ---------------

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def risky_portal(risky, django_db) -> Iterator[UMSServer]:
    """The portal on the server where a new device asks for an emailed code."""
    with override_settings(UMS_BASE_URL=risky.url):
        yield risky


def test_a_new_browser_confirms_its_sign_in_with_the_emailed_code(risky_portal, new_account):
    account = new_account(server=risky_portal, login=False)
    email, form = account.user.email, {"username": account.username, "password": PASSWORD}
    home = Client(HTTP_USER_AGENT=FIREFOX)
    assert home.post("/login/", form).status_code == 302  # the account's first sign-in
    cookie = home.cookies["ums_device"]
    assert len(cookie.value) >= 16 and cookie["httponly"] and cookie["samesite"] == "Lax"
    assert int(cookie["max-age"]) == 400 * 24 * 3600

    # Another browser of the same make: only its device cookie tells it from the first.
    travel = Client(HTTP_USER_AGENT=FIREFOX)
    seen = risky_portal.count_mails(email, SIGN_IN_CODE_SUBJECT)
    login_url = f"/login/?{urlencode({'next': '/labs/'})}"
    response = travel.post(login_url, form)
    assert response.status_code == 200
    assert b"we emailed you a code" in response.content
    assert b"value=email_code" in response.content and b"value=totp" not in response.content
    pending = travel.session[PENDING_KEY]
    assert (pending["kind"], pending["methods"]) == ("verification_required", ["email_code"])
    assert session_tokens(travel) is None
    code = sign_in_code(risky_portal.wait_for_new_mail(email, SIGN_IN_CODE_SUBJECT, seen))

    wrong = {"mfa_method": "email_code", "mfa_code": not_the_code(code)}
    response = travel.post(login_url, wrong)
    assert response.status_code == 401
    assert b"2 tries left" in response.content and b"value=email_code" in response.content
    response = travel.post(login_url, {"mfa_method": "email_code", "mfa_code": code})
    assert response.status_code == 302
    assert response["Location"] == "/labs/"
    assert PENDING_KEY not in travel.session
    assert session_amr(travel) == ["pwd", "otp"]  # an emailed code is no second factor
    assert travel.get("/mfa-only/").status_code == 403
    assert travel.get("/whoami/").json() == {"username": account.username}

    # UMS knows the two browsers apart, by name from the forwarded User-Agent; each is
    # "current" for its own calls, which carry its device id.
    seen_from_travel = travel.get("/devices/").json()["devices"]
    seen_from_home = home.get("/devices/").json()["devices"]
    assert [(d["browser"], d["os"]) for d in seen_from_travel] == [("Firefox", "Linux")] * 2
    assert [d["current"] for d in seen_from_travel] == [True, False]  # the latest first
    assert [d["current"] for d in seen_from_home] == [False, True]

    # Verified, the browser is known: it signs in again without a code.
    travel.post("/logout/")
    assert travel.post("/login/", form).status_code == 302
    assert session_amr(travel) == ["pwd"]


def test_the_second_step_by_email_is_dropped_after_three_wrong_codes(risky_portal, new_account):
    account = new_account(server=risky_portal, login=False)
    form = {"username": account.username, "password": PASSWORD}
    assert Client().post("/login/", form).status_code == 302
    browser = Client()
    seen = risky_portal.count_mails(account.user.email, SIGN_IN_CODE_SUBJECT)
    assert b"value=email_code" in browser.post("/login/", form).content
    code = sign_in_code(
        risky_portal.wait_for_new_mail(account.user.email, SIGN_IN_CODE_SUBJECT, seen)
    )
    wrong = {"mfa_method": "email_code", "mfa_code": not_the_code(code)}
    browser.post("/login/", wrong)
    browser.post("/login/", wrong)
    response = browser.post("/login/", wrong)  # the third: UMS has killed the token
    assert (response.status_code, response.content) == (401, b"sign in again")
    assert PENDING_KEY not in browser.session
    assert browser.post("/login/", {"mfa_method": "email_code", "mfa_code": code}).content == (
        b"sign in again"
    )


def test_without_the_device_cookie_the_browsers_headers_tell_devices_apart(
    risky_portal, new_account
):
    """Without UMSDeviceMiddleware no device id is sent: UMS recognises a browser by the
    User-Agent and Accept-Language the integration forwards."""
    from django.conf import settings

    account = new_account(server=risky_portal, login=False)
    form = {"username": account.username, "password": PASSWORD}
    middleware = [m for m in settings.MIDDLEWARE if not m.endswith("UMSDeviceMiddleware")]
    with override_settings(MIDDLEWARE=middleware):
        english = {"HTTP_USER_AGENT": FIREFOX, "HTTP_ACCEPT_LANGUAGE": "en-GB"}
        first = Client(**english)
        assert first.post("/login/", form).status_code == 302
        assert "ums_device" not in first.cookies
        assert Client(**english).post("/login/", form).status_code == 302  # the same device
        french = Client(HTTP_USER_AGENT=FIREFOX, HTTP_ACCEPT_LANGUAGE="fr-FR")
        response = french.post("/login/", form)
        assert response.status_code == 200 and b"value=email_code" in response.content


def test_after_this_wasnt_me_the_portal_asks_for_a_password_reset(portal, new_account):
    account = new_account()  # signed in elsewhere: the browser below is a new device
    form = {"username": account.username, "password": PASSWORD}
    browser = Client(HTTP_USER_AGENT=FIREFOX)
    assert browser.post("/login/", form).status_code == 302
    mail = portal.wait_for_mail(account.user.email, "New sign-in to your account")
    token = re.search(r"/not-me\?token=([A-Za-z0-9_-]+)", mail["body"]).group(1)

    with UMSClient(portal.url) as anyone:
        assert anyone.report_not_me(token) == 2
    assert browser.get("/labs/").status_code == 302  # its UMS session is over: logged out
    response = browser.post("/login/", form)
    assert (response.status_code, response.content) == (
        403,
        b"reset your password to sign in again",
    )
    assert session_tokens(browser) is None and PENDING_KEY not in browser.session


@pytest.fixture
def geo_portal(geo, django_db) -> Iterator[UMSServer]:
    """The portal on the server that knows places and trusts 127.0.0.1's X-Forwarded-For."""
    with override_settings(UMS_BASE_URL=geo.url):
        yield geo


def test_the_portal_forwards_the_browsers_address_so_ums_can_place_it(geo_portal, new_account):
    account = new_account(server=geo_portal, login=False)
    form = {"username": account.username, "password": PASSWORD}
    # The portal (on 127.0.0.1, a proxy UMS trusts) passes on the browser's own address.
    tokyo = Client(HTTP_USER_AGENT=FIREFOX, REMOTE_ADDR="126.4.5.6")
    assert tokyo.post("/login/", form).status_code == 302
    devices = tokyo.get("/devices/").json()["devices"]
    assert devices[0]["last_ip"] == "126.4.5.6"
    assert devices[0]["last_place"] == "Tokyo, Japan"
    # A denylisted browser address is refused by UMS before the password is looked at, and
    # the portal refuses the sign-in.
    listed = Client(HTTP_USER_AGENT=FIREFOX, REMOTE_ADDR="203.0.113.77")
    assert listed.post("/login/", form).status_code == 401
    assert session_tokens(listed) is None
    with override_settings(UMS_FORWARD_CLIENT_IP=False):
        # Switched off, UMS sees only the portal: no place for it in the test database.
        assert listed.post("/login/", form).status_code == 302


def test_the_portal_asks_for_new_terms_then_the_second_factor(
    consenting, renewed_terms, django_db, make_client
):
    def register(totp: bool) -> tuple[str, AuthenticatorApp | None]:
        client, username = make_client(consenting), unique()
        client.register(
            username,
            f"{username}@example.org",
            PASSWORD,
            accept_terms=TERMS,
            accept_privacy=PRIVACY,
        )
        client.login(username, PASSWORD)
        return username, enrol_totp(client)[0] if totp else None

    username, app = register(totp=True)
    assert app is not None
    with override_settings(UMS_BASE_URL=renewed_terms.url):
        browser = Client()
        login_url = f"/login/?{urlencode({'next': '/labs/'})}"
        response = browser.post(login_url, {"username": username, "password": PASSWORD})
        assert response.status_code == 200
        assert b"accept the terms" in response.content
        pending = browser.session[PENDING_KEY]
        assert (pending["kind"], pending["methods"]) == ("consent_required", ["consent"])
        assert session_tokens(browser) is None

        # A second factor does not answer the consent step, nor does a stale version.
        response = browser.post(login_url, {"mfa_method": "totp", "mfa_code": app.wrong_code()})
        assert response.status_code == 401
        assert browser.session[PENDING_KEY]["kind"] == "consent_required"
        stale = {"accept_terms": TERMS, "accept_privacy": PRIVACY}
        response = browser.post(login_url, stale)
        assert response.status_code == 400 and b"accept the terms" in response.content
        assert browser.session[PENDING_KEY]["kind"] == "consent_required"

        # Accepted, the sign-in goes on to its second factor.
        response = browser.post(login_url, {"accept_terms": NEW_TERMS, "accept_privacy": PRIVACY})
        assert response.status_code == 200 and b"second factor" in response.content
        pending = browser.session[PENDING_KEY]
        assert pending["kind"] == "mfa_required" and "totp" in pending["methods"]
        response = browser.post(login_url, {"mfa_method": "totp", "mfa_code": app.code()})
        assert response.status_code == 302
        assert response["Location"] == "/labs/"
        assert PENDING_KEY not in browser.session
        assert session_amr(browser) == ["pwd", "otp", "mfa"]

        # The login form may carry the acceptance itself.
        other, _ = register(totp=False)
        one_step = {
            "username": other,
            "password": PASSWORD,
            "accept_terms": NEW_TERMS,
            "accept_privacy": PRIVACY,
        }
        browser = Client()
        assert browser.post("/login/", one_step).status_code == 302
        assert browser.get("/whoami/").json() == {"username": other}
