"""Automatic refresh on 401, single-flight across threads (server with 2-second access tokens)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import PASSWORD, CountingTransport, wait_until_expired
from ums_client import AuthenticationError, MemoryTokenStore, UMSClient

REFRESH = "/api/auth/refresh"


@pytest.fixture
def short_account(new_account, ums_short):
    return new_account(server=ums_short, login=False)


@pytest.fixture
def counted(ums_short, short_account):
    """A client logged in to the short-TTL server, counting the requests it sends."""
    transport = CountingTransport()
    with UMSClient(ums_short.url, transport=transport) as client:
        client.login(short_account.username, PASSWORD)
        yield client, transport


def test_expired_access_token_is_refreshed_once_and_the_call_retried(
    counted, ums_short, short_account
):
    client, transport = counted
    before = client.tokens
    wait_until_expired(ums_short, before.access_token)

    me = client.me()

    assert me.id == short_account.id
    assert transport.counts[REFRESH] == 1
    assert transport.counts["/api/auth/me"] == 2  # refused, then retried
    after = client.tokens
    assert after.access_token != before.access_token
    assert after.refresh_token != before.refresh_token


def test_concurrent_calls_share_one_refresh(counted, ums_short, short_account):
    client, transport = counted
    before = client.tokens
    wait_until_expired(ums_short, before.access_token)
    barrier = threading.Barrier(8)

    def call(_: int) -> int:
        barrier.wait()
        return client.me().id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(call, range(8)))

    assert ids == [short_account.id] * 8
    assert transport.counts[REFRESH] == 1
    # No spent refresh token was replayed: the session is intact and refreshes again.
    sessions = client.list_sessions()
    assert len(sessions) == 1 and sessions[0].current
    client.refresh()
    assert transport.counts[REFRESH] == 2
    assert client.me().id == short_account.id


def test_explicit_refreshes_from_threads_do_not_replay_a_spent_token(counted, short_account):
    client, transport = counted
    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = list(pool.map(lambda _: client.refresh(), range(8)))
    # Serialised: each refresh used the token the previous one returned.
    assert len({p.refresh_token for p in pairs}) == 8
    assert transport.counts[REFRESH] == 8
    assert client.me().id == short_account.id


def test_no_retry_when_the_session_was_revoked(counted, ums_short):
    client, transport = counted
    with UMSClient(ums_short.url, token_store=MemoryTokenStore(client.tokens)) as twin:
        twin.logout()  # revokes the session both clients hold
    with pytest.raises(AuthenticationError) as excinfo:
        client.me()
    assert excinfo.value.status == 401
    assert transport.counts[REFRESH] == 1  # tried once, refused
    assert transport.counts["/api/auth/me"] == 1  # not retried without fresh tokens
    assert client.tokens is None


def test_the_spent_refresh_token_is_refused_after_an_automatic_refresh(counted, ums_short):
    client, _ = counted
    spent = client.tokens.refresh_token
    wait_until_expired(ums_short, client.tokens.access_token)
    client.me()
    response = httpx.post(f"{ums_short.url}{REFRESH}", json={"refresh_token": spent})
    assert response.status_code == 401
    # ... and that reuse revoked the session, as the contract says.
    with pytest.raises(AuthenticationError):
        client.me()
