"""Second factors in the console, in a real browser: passkeys created and used through
Chromium's virtual authenticator (its DevTools protocol's WebAuthn domain, a platform
authenticator with user verification), proving a factor again before changing factors,
new recovery codes, and an admin who must enrol a factor before the console lets them in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from conftest import (
    ADMIN,
    PASSWORD,
    App,
    Person,
    Server,
    add_virtual_authenticator,
    assert_accessible,
    sign_in,
    snapshot,
)
from ums_client import AuthenticationError, MFARequired, UMSClient


@pytest.fixture(scope="module")
def local() -> Iterator[Server]:
    """The server as http://localhost: WebAuthn's relying party must be a domain."""
    started = Server(host="localhost")
    yield started
    started.stop()


def logins_of(server: Server, user_id: int) -> list[dict]:
    admin = UMSClient(server.url)
    admin.login(ADMIN[0], ADMIN[2])
    return [event.details for event in admin.list_audit_logs(action="auth.login", user_id=user_id).items]


def test_a_passkey_is_added_used_with_and_without_a_password_renamed_and_removed(
    page: Page, local: Server
):
    add_virtual_authenticator(page)
    person = Person(local)
    sign_in(page, local, person.username, PASSWORD)
    expect(page).to_have_url(f"{local.url}/account")

    page.get_by_label("Name of the new passkey").fill("Laptop")
    page.get_by_role("button", name="Add a passkey").click()
    expect(page.get_by_role("button", name="Create the passkey")).to_be_enabled()
    assert_accessible(page)
    snapshot(page, "passkey-create")
    page.get_by_role("button", name="Create the passkey").click()
    # The account's first factor comes with its recovery codes, shown once.
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    page.get_by_role("link", name="I have kept them: go on").click()
    expect(page.locator("#passkeys tr")).to_have_count(1)
    expect(page.locator("#passkeys")).to_contain_text("Laptop")
    status = person.client.mfa_status()
    assert status.enabled and [passkey.name for passkey in status.passkeys] == ["Laptop"]
    with pytest.raises(MFARequired):
        UMSClient(local.url).login(person.username, PASSWORD)
    assert_accessible(page)
    snapshot(page, "account-with-passkey")

    # Without a password: the passkey is both factors.
    page.get_by_role("button", name="Sign out", exact=True).first.click()
    page.get_by_role("button", name="Sign in with a passkey").click()
    expect(page.get_by_role("button", name="Use a passkey")).to_be_enabled()
    assert_accessible(page)
    snapshot(page, "passkey-sign-in")
    page.get_by_role("button", name="Use a passkey").click()
    expect(page).to_have_url(f"{local.url}/account")
    assert logins_of(local, person.id)[0]["passwordless"] is True

    # With the password, the passkey is the second step.
    page.get_by_role("button", name="Sign out", exact=True).first.click()
    sign_in(page, local, person.username, PASSWORD)
    expect(page.get_by_role("heading", name="Second factor")).to_be_visible()
    page.get_by_role("button", name="Use a passkey").click()
    expect(page).to_have_url(f"{local.url}/account")
    latest = logins_of(local, person.id)[0]
    assert latest["second_factor"] == "webauthn" and not latest.get("passwordless")

    page.get_by_label("New name of Laptop").fill("Work laptop")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("status")).to_contain_text("renamed")
    assert [passkey.name for passkey in person.client.mfa_status().passkeys] == ["Work laptop"]

    # This session proved the passkey a moment ago, so it may remove it.
    page.get_by_role("button", name="Remove the passkey Work laptop").click()
    expect(page.get_by_role("status")).to_contain_text("removed")
    assert person.client.mfa_status().passkeys == ()
    UMSClient(local.url).login(person.username, PASSWORD)


def test_a_factor_is_proved_again_before_changing_factors_and_new_codes_void_the_old(
    page: Page, server: Server, person: Person
):
    app = App(person.client.enroll_totp().otpauth_uri)
    old_codes = person.client.confirm_totp(app.code()).recovery_codes
    assert old_codes
    # A console signed in before the factor existed has not proved it.
    sign_in(page, server, person.username, PASSWORD)
    page.get_by_label("Code").fill(app.code())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{server.url}/account")
    expect(page.get_by_text("This session has one.")).to_be_visible()

    page.locator("#codes-password").fill(PASSWORD)
    page.get_by_role("button", name="Make new recovery codes").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    new_codes = [code.strip() for code in page.locator("#recovery-codes li").all_text_contents()]
    assert not set(new_codes) & set(old_codes)
    snapshot(page, "recovery-codes-new")
    # An old code no longer signs in; a new one does, once.
    with pytest.raises(MFARequired) as asked:
        UMSClient(server.url).login(person.username, PASSWORD)
    fresh = UMSClient(server.url)
    with pytest.raises(AuthenticationError):
        fresh.login_mfa(asked.value.mfa_token, method="recovery_code", code=old_codes[0])
    with pytest.raises(MFARequired) as asked:
        fresh.login(person.username, PASSWORD)
    fresh.login_mfa(asked.value.mfa_token, method="recovery_code", code=new_codes[0])


def test_a_session_without_a_recent_proof_steps_up_with_a_code(
    page: Page, server: Server, person: Person
):
    sign_in(page, server, person.username, PASSWORD)
    expect(page).to_have_url(f"{server.url}/account")
    # The factor is added through the API after the console signed in with a password only.
    app = App(person.client.enroll_totp().otpauth_uri)
    person.client.confirm_totp(app.code())
    page.goto(f"{server.url}/account")
    expect(page.get_by_role("button", name="Confirm it is you")).to_be_visible()
    assert_accessible(page)
    page.locator("#codes-password").fill(PASSWORD)
    page.get_by_role("button", name="Make new recovery codes").click()
    expect(page.get_by_role("alert")).to_contain_text("Confirm it is you")
    before = person.client.mfa_status().recovery_codes_left

    page.get_by_label("Method").select_option("totp")
    page.locator("#step-code").fill("000000" if app.totp.now() != "000000" else "111111")
    page.get_by_role("button", name="Confirm it is you").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Method").select_option("totp")
    page.locator("#step-code").fill(app.code())
    page.get_by_role("button", name="Confirm it is you").click()
    expect(page.get_by_role("status")).to_contain_text("Confirmed")
    expect(page.get_by_text("This session has one.")).to_be_visible()
    page.locator("#codes-password").fill(PASSWORD)
    page.get_by_role("button", name="Make new recovery codes").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    assert before == 10 and person.client.mfa_status().recovery_codes_left == 10
    admin = UMSClient(server.url)
    admin.login(ADMIN[0], ADMIN[2])
    steps = admin.list_audit_logs(action="auth.step_up", user_id=person.id).items
    assert [event.details["method"] for event in steps] == ["totp"]


def test_an_admin_without_a_factor_enrols_one_to_sign_in(page: Page):
    strict = Server(UMS_REQUIRE_MFA_FOR_ADMINS="true")
    try:
        sign_in(page, strict, ADMIN[0], ADMIN[2], "/admin")
        expect(page.get_by_role("heading", name="Set up a second factor")).to_be_visible()
        assert_accessible(page)
        page.get_by_role("button", name="Set up an authenticator app").click()
        app = App.from_secret(page.locator("#totp-secret").text_content() or "")
        page.get_by_label("The code the app shows").fill(app.code())
        page.get_by_role("button", name="Turn on").click()
        expect(page.locator("#recovery-codes li")).to_have_count(10)
        page.get_by_role("link", name="I have kept them: go on").click()
        expect(page).to_have_url(f"{strict.url}/admin")
        expect(page.get_by_role("heading", name="Users")).to_be_visible()
        # The API now asks the admin for the factor too.
        with pytest.raises(MFARequired):
            UMSClient(strict.url).login(ADMIN[0], ADMIN[2])
    finally:
        strict.stop()
