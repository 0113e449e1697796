"""/api/auth, /health, /ready and the JWKS against the live server."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import jwt
import pytest

from conftest import ADMIN_PASSWORD, ADMIN_USERNAME, ISSUER, PASSWORD, unique
from ums_client import AuthenticationError, LoginResult, Membership, TokenPair, User


def test_health_and_ready(admin):
    assert admin.health()["status"] == "ok"
    ready = admin.ready()
    assert ready["status"] == "ready"
    assert ready["checks"]["database"] == "ok"


def test_register_returns_the_new_user(make_client, ums):
    client = make_client(ums)
    username = unique("Reg")
    user = client.register(
        username, f"{username}@Example.ORG", PASSWORD, first_name="Ada", last_name="Lovelace"
    )
    assert isinstance(user, User)
    assert user.id > 0
    assert user.username == username  # shown as entered
    assert user.email == f"{username.lower()}@example.org"  # normalised to lower case
    assert (user.first_name, user.last_name) == ("Ada", "Lovelace")
    assert user.is_active and not user.is_admin and not user.is_locked
    assert user.last_login_at is None
    assert user.created_at.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - user.created_at).total_seconds()) < 120
    assert client.tokens is None  # registering does not log in


def test_login_by_username_or_email_stores_tokens(make_client, new_account, ums):
    account = new_account(login=False, first_name="Grace")
    client = make_client(ums)
    result = client.login(account.username, PASSWORD)
    assert isinstance(result, LoginResult)
    assert result.tokens.token_type == "Bearer"
    assert result.tokens.expires_in == 3600
    assert result.user.id == account.id
    assert result.user.first_name == "Grace"
    assert result.user.labs == ()
    assert result.user.last_login_at is not None
    assert client.tokens == result.tokens

    claims = jwt.decode(result.access_token, options={"verify_signature": False})
    assert claims["sub"] == str(account.id)
    assert claims["typ"] == "access"
    assert claims["iss"] == ISSUER

    by_email = make_client(ums).login(account.user.email.upper(), PASSWORD)
    assert by_email.user.id == account.id
    assert by_email.tokens.access_token != result.tokens.access_token


def test_me_returns_the_caller_with_labs(admin, new_account):
    account = new_account()
    lab = admin.create_lab(unique("me"), "Me lab")
    admin.add_member(lab.id, account.id, "member")
    me = account.client.me()
    assert me.id == account.id
    assert me.labs == (
        Membership(id=lab.id, code=lab.code, name="Me lab", role="member", is_active=True),
    )


def test_refresh_rotates_the_pair_and_reuse_revokes_the_session(make_client, new_account, ums):
    account = new_account()
    first = account.client.tokens
    assert first is not None and first.refresh_token

    second = account.client.refresh()
    assert isinstance(second, TokenPair)
    assert account.client.tokens == second
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    assert account.client.me().id == account.id  # the new access token works

    # Reusing the spent refresh token is refused, and it revokes the whole session.
    thief = make_client(ums)
    with pytest.raises(AuthenticationError) as excinfo:
        thief.refresh(first.refresh_token)
    assert excinfo.value.status == 401
    assert "already used" in (excinfo.value.detail or "")
    with pytest.raises(AuthenticationError):
        account.client.me()
    assert account.client.tokens is None  # the failed automatic refresh dropped dead tokens


def test_refresh_without_a_refresh_token_is_refused_locally(make_client, ums):
    with pytest.raises(AuthenticationError) as excinfo:
        make_client(ums).refresh()
    assert excinfo.value.code == "not_logged_in"


def test_an_access_token_is_no_refresh_token(make_client, new_account, ums):
    account = new_account()
    with pytest.raises(AuthenticationError) as excinfo:
        make_client(ums).refresh(account.client.tokens.access_token)
    assert "wrong type" in (excinfo.value.detail or "")


def test_logout_revokes_the_session(make_client, new_account, ums):
    account = new_account()
    tokens = account.client.tokens
    account.client.logout()
    assert account.client.tokens is None

    other = make_client(ums)
    with pytest.raises(AuthenticationError):
        other.refresh(tokens.refresh_token)
    response = httpx.get(
        f"{ums.url}/api/auth/me", headers={"Authorization": f"Bearer {tokens.access_token}"}
    )
    assert response.status_code == 401


def test_sessions_are_listed_and_one_can_be_revoked(make_client, new_account, ums):
    account = new_account()
    laptop = make_client(ums)
    laptop.login(account.username, PASSWORD)

    sessions = account.client.list_sessions()
    assert len(sessions) == 2
    current = [s for s in sessions if s.current]
    assert len(current) == 1
    own_sid = jwt.decode(account.client.tokens.access_token, options={"verify_signature": False})[
        "sid"
    ]
    assert current[0].id == own_sid
    assert all(
        s.ip == "127.0.0.1" and s.user_agent.startswith("ums-client-python/") for s in sessions
    )

    other = next(s for s in sessions if not s.current)
    account.client.revoke_session(other.id)
    assert [s.id for s in account.client.list_sessions()] == [own_sid]
    with pytest.raises(AuthenticationError):
        laptop.me()


def test_jwks_lists_the_signing_key(admin):
    jwks = admin.jwks()
    kids = {key["kid"] for key in jwks["keys"]}
    header = jwt.get_unverified_header(admin.tokens.access_token)
    assert header["kid"] in kids
    assert all(key["use"] == "sig" for key in jwks["keys"])


def test_bootstrap_admin_is_an_admin(make_client, ums):
    result = make_client(ums).login(ADMIN_USERNAME, ADMIN_PASSWORD)
    assert result.user.is_admin
    assert jwt.decode(result.access_token, options={"verify_signature": False})["is_admin"] is True
