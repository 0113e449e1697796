"""The security dashboard (admins: events, summary, live stream) and "This wasn't me", against
the live server.

Events are made by the tests themselves (wrong passwords, an emailed code asked for and
answered wrong, a risky sign-in), on the ``risky`` server (a new device asks for an emailed
code) or the ``geo`` server (places and client addresses, see conftest.py).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import (
    PARIS,
    PASSWORD,
    TOKYO,
    new_device,
    not_the_code,
    registered,
    unique,
    verification_step,
)
from ums_client import (
    AuthenticationError,
    CountryAttempts,
    IPFailures,
    Page,
    PasswordResetRequired,
    PermissionDenied,
    SecurityCounts,
    SecurityEvent,
    SecuritySummary,
    TargetedAccount,
    UMSClient,
    ValidationError,
)

RISKY_SIGN_IN_SUBJECT = "Unusual sign-in to your account"


def fail_login(client: UMSClient, username: str) -> None:
    with pytest.raises(AuthenticationError):
        client.login(username, "not the password")


# -- events -----------------------------------------------------------------------------


def test_security_events_of_a_risky_sign_in(risky, make_client, admin_of):
    laptop, username, email = registered(risky, make_client, device_id=new_device())
    user_id = laptop.me().id
    fail_login(laptop, username)
    phone = make_client(risky, device_id=new_device())
    step, code = verification_step(risky, phone, username, email)
    with pytest.raises(AuthenticationError):
        phone.login_mfa(step.mfa_token, "email_code", not_the_code(code))
    phone.login_mfa(step.mfa_token, "email_code", code)

    admin = admin_of(risky)
    page = admin.security_events(user_id=user_id)
    assert isinstance(page, Page)
    assert all(isinstance(e, SecurityEvent) and e.user_id == user_id for e in page)
    assert {e.action for e in page} == {
        "auth.login_failed",
        "auth.mfa_challenged",
        "auth.mfa_failed",
        "security.risky_sign_in",
    }
    assert page.total == len(page.items) == 4
    ids = [e.id for e in page]
    assert ids == sorted(ids, reverse=True)  # the newest first
    risky_sign_in = page.items[0]
    assert (risky_sign_in.action, risky_sign_in.success) == ("security.risky_sign_in", True)
    assert risky_sign_in.ip == "127.0.0.1"
    assert risky_sign_in.occurred_at.tzinfo is not None
    assert risky_sign_in.details["risk"]["score"] == 60  # what made it risky, explained
    assert [s["kind"] for s in risky_sign_in.details["risk"]["signals"]] == ["new_device"]

    failed = admin.security_events(action="auth.login_failed", user_id=user_id)
    assert [(e.action, e.success) for e in failed] == [("auth.login_failed", False)]
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert admin.security_events(user_id=user_id, from_=later).total == 0
    assert admin.security_events(user_id=user_id, to=later, per_page=1).pages == 4

    with pytest.raises(ValidationError) as not_security:
        admin.security_events(action="auth.login")  # an audit action, not a security one
    assert "action" in not_security.value.errors
    with pytest.raises(PermissionDenied):
        phone.security_events()


# -- summary ----------------------------------------------------------------------------


def failures_by_ip(summary: SecuritySummary) -> dict[str, int]:
    return {entry.ip: entry.failures for entry in summary.top_ips}


def attempts_by_country(summary: SecuritySummary) -> dict[str, int]:
    return {entry.country: entry.attempts for entry in summary.countries}


def test_security_summary_counts_ranks_and_places(geo, make_client, admin_of):
    admin = admin_of(geo)
    before = admin.security_summary(window="1h")
    user, username, _ = registered(geo, make_client, headers={"X-Forwarded-For": PARIS})
    from_tokyo = make_client(geo, headers={"X-Forwarded-For": TOKYO})
    for _ in range(2):
        fail_login(from_tokyo, username)

    summary = admin.security_summary(window="1h")
    assert isinstance(summary, SecuritySummary)
    assert summary.window_seconds == 3600
    assert summary.to - summary.from_ == timedelta(hours=1)
    assert isinstance(summary.counts, SecurityCounts)
    # Other tests use this server too: compare with the summary before.
    assert summary.counts.sign_ins - before.counts.sign_ins == 1
    assert summary.counts.failed_sign_ins - before.counts.failed_sign_ins == 2
    assert all(isinstance(i, IPFailures) for i in summary.top_ips)
    assert failures_by_ip(summary).get(TOKYO, 0) - failures_by_ip(before).get(TOKYO, 0) == 2
    assert all(isinstance(c, CountryAttempts) for c in summary.countries)
    assert attempts_by_country(summary)["JP"] - attempts_by_country(before).get("JP", 0) == 2
    assert attempts_by_country(summary)["FR"] - attempts_by_country(before).get("FR", 0) == 1
    assert TargetedAccount(username, 2) in summary.targeted_accounts

    assert admin.security_summary().window_seconds == 24 * 3600  # the server's default
    assert admin.security_summary(window="7d").window_seconds == 7 * 24 * 3600
    with pytest.raises(ValidationError) as bad:
        admin.security_summary(window="soon")
    assert "window" in bad.value.errors
    with pytest.raises(PermissionDenied):
        user.security_summary()


# -- the live stream --------------------------------------------------------------------


def test_security_stream_delivers_events_as_they_happen(ums, admin, new_account, make_client):
    account = new_account()
    stop = threading.Event()

    def fail_a_few_logins() -> None:
        # Until the stream has seen two (it delivers events recorded after it opened), and
        # fewer than the five that lock the account.
        with UMSClient(ums.url) as client:
            for _ in range(4):
                if stop.wait(0.4):
                    return
                with contextlib.suppress(AuthenticationError):
                    client.login(account.username, "not the password")

    trigger = threading.Thread(target=fail_a_few_logins)
    trigger.start()
    try:
        events = list(admin.security_stream(timeout=15, limit=2))
    finally:
        stop.set()
        trigger.join()
    assert len(events) == 2
    assert all(isinstance(e, SecurityEvent) for e in events)
    assert [(e.action, e.success, e.user_id) for e in events] == [
        ("auth.login_failed", False, account.id)
    ] * 2
    assert events[0].id < events[1].id
    listed = admin.security_events(user_id=account.id, per_page=100).items
    assert all(event in listed for event in events)  # the same events as /events lists

    started = time.monotonic()
    assert list(admin.security_stream(timeout=0.5)) == []  # nothing happened: ends on time
    assert time.monotonic() - started < 4
    with pytest.raises(PermissionDenied):
        next(account.client.security_stream(timeout=5))


# -- "This wasn't me" -------------------------------------------------------------------


def not_me_token(mail: dict[str, str]) -> str:
    match = re.search(r"/not-me\?token=([A-Za-z0-9_-]+)", mail["body"])
    assert match, f"no 'This wasn't me' link in {mail}"
    return match.group(1)


def test_this_wasnt_me_ends_every_session_and_requires_a_password_reset(risky, make_client):
    laptop, username, email = registered(risky, make_client, device_id=new_device())
    stranger = make_client(risky, device_id=new_device())
    step, code = verification_step(risky, stranger, username, email)
    stranger.login_mfa(step.mfa_token, "email_code", code)
    token = not_me_token(risky.wait_for_mail(email, RISKY_SIGN_IN_SUBJECT))

    assert make_client(risky).report_not_me(token) == 2  # the laptop's and the stranger's
    for client in (laptop, stranger):
        with pytest.raises(AuthenticationError):
            client.me()  # refreshing fails too: the sessions are over
    with pytest.raises(PasswordResetRequired) as refused:
        make_client(risky, device_id=new_device()).login(username, PASSWORD)
    assert isinstance(refused.value, PermissionDenied)
    assert (refused.value.status, refused.value.code) == (403, "password_reset_required")
    with pytest.raises(ValidationError):
        make_client(risky).report_not_me(token)  # spent
    with pytest.raises(ValidationError):
        make_client(risky).report_not_me(unique("not-a-token"))

    # A reset link was emailed at once; once reset, the account signs in again.
    reset = risky.wait_for_token(email, "Reset your password")
    new_password = "Another-Strong-Pass-91"
    make_client(risky).reset_password(reset, new_password)
    assert laptop.login(username, new_password).user.username == username
