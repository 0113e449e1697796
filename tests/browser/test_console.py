"""The console in a real browser: signing in (with and without a second factor), the account
pages' flows, the admin console, CSRF, session expiry, and accessibility (axe-core) of each
page. Every page visited is saved as a screenshot."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from conftest import ADMIN, PASSWORD, App, Person, Server, assert_accessible, sign_in, snapshot
from ums_client import AuthenticationError, MFARequired, UMSClient


def test_the_sign_in_page_leads_to_the_account_and_signs_out(page: Page, server: Server, person: Person):
    page.goto(f"{server.url}/account")
    expect(page).to_have_url(f"{server.url}/account/login?next=/account")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert_accessible(page)
    snapshot(page, "login")

    # A wrong password is said so, on the same form.
    sign_in(page, server, person.username, "not the password")
    expect(page.get_by_role("alert")).to_contain_text("Invalid username or password")

    sign_in(page, server, person.username, PASSWORD)
    expect(page).to_have_url(f"{server.url}/account")
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.get_by_text(person.email)).to_be_visible()
    assert_accessible(page)
    snapshot(page, "account")

    page.get_by_role("button", name="Sign out", exact=True).first.click()
    expect(page).to_have_url(f"{server.url}/account/login")
    page.goto(f"{server.url}/account")
    expect(page).to_have_url(f"{server.url}/account/login?next=/account")


def test_names_and_password_are_changed_from_the_account_page(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD)
    page.get_by_label("First name").fill("Ada")
    page.get_by_label("Last name").fill("Lovelace")
    page.get_by_role("button", name="Save the names").click()
    expect(page.get_by_role("status")).to_contain_text("names were saved")
    assert person.client.me().first_name == "Ada"

    page.get_by_label("Current password").fill("not the password")
    page.get_by_label("New password").fill("Another-Strong-Pass-93")
    page.get_by_role("button", name="Change the password").click()
    expect(page.get_by_role("alert")).to_contain_text("current password")
    snapshot(page, "account-password-refused")

    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password").fill("Another-Strong-Pass-93")
    page.get_by_role("button", name="Change the password").click()
    expect(page.get_by_role("status")).to_contain_text("password was changed")
    # The API session of before was signed out with the change; the new password works.
    with pytest.raises(AuthenticationError):
        person.client.me()
    UMSClient(server.url).login(person.username, "Another-Strong-Pass-93")


def test_another_session_is_signed_out_from_the_list(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD)
    rows = page.locator("section[aria-labelledby=sessions-heading] tbody tr")
    expect(rows).to_have_count(2)  # the API client's and this browser's
    expect(page.get_by_text("this browser")).to_be_visible()
    page.get_by_role("button", name="Sign out the session from").click()
    expect(page.get_by_role("status")).to_contain_text("session was signed out")
    expect(rows).to_have_count(1)
    with pytest.raises(AuthenticationError):
        person.client.me()


def test_revoking_the_browsers_session_through_the_api_ends_the_console(
    page: Page, server: Server, person: Person
):
    sign_in(page, server, person.username, PASSWORD)
    expect(page).to_have_url(f"{server.url}/account")
    (browser_session,) = [s for s in person.client.list_sessions() if not s.current]
    person.client.revoke_session(browser_session.id)
    page.goto(f"{server.url}/account")
    expect(page).to_have_url(f"{server.url}/account/login?next=/account")


def test_a_second_factor_is_asked_after_the_password(page: Page, server: Server, person: Person):
    app = App(person.client.enroll_totp().otpauth_uri)
    person.client.confirm_totp(app.code())
    sign_in(page, server, person.username, PASSWORD)
    expect(page.get_by_role("heading", name="Second factor")).to_be_visible()
    assert_accessible(page)
    snapshot(page, "second-factor")
    page.get_by_label("Code").fill("000000" if app.totp.now() != "000000" else "111111")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_be_visible()

    # The wrong code spent the token: sign in again, with the app's code this time.
    sign_in(page, server, person.username, PASSWORD)
    page.get_by_label("Method").select_option("totp")
    page.get_by_label("Code").fill(app.code())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{server.url}/account")
    expect(page.locator("dt:has-text('Second factor') + dd")).to_have_text("on")


def test_the_admin_console_lists_searches_unlocks_and_browses_the_trail(
    page: Page, server: Server, person: Person, admin_client: UMSClient
):
    for _ in range(5):  # the default lockout threshold
        with pytest.raises(AuthenticationError):
            UMSClient(server.url).login(person.username, "wrong password")
    assert admin_client.get_user(person.id).is_locked

    sign_in(page, server, ADMIN[0], ADMIN[2], path="/admin")
    expect(page).to_have_url(f"{server.url}/admin")
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    assert_accessible(page)
    snapshot(page, "admin-users")
    page.get_by_label("Locked now").check()
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tbody")).to_contain_text(person.username)
    page.get_by_label("Username or email contains").fill(person.username)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    page.get_by_role("button", name=f"Unlock {person.username}").click()
    expect(page.get_by_role("status")).to_contain_text("unlocked")
    assert not admin_client.get_user(person.id).is_locked

    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").fill("auth.login_failed")
    page.get_by_label("User id").fill(str(person.id))
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(5)
    assert_accessible(page)
    snapshot(page, "admin-audit")
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    lines = open(download.value.path(), encoding="utf-8").read().strip().splitlines()
    assert sum("auth.login_failed" in line for line in lines) == 5


def test_the_admin_console_is_refused_to_others(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD, path="/admin")
    expect(page.get_by_role("alert")).to_contain_text("system admins")
    assert_accessible(page)
    snapshot(page, "admin-refused")
    response = page.request.get(f"{server.url}/admin/audit")
    assert response.status == 403


def test_a_form_without_its_csrf_token_changes_nothing(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD)
    # The browser's own cookie goes along; the token does not.
    response = page.request.post(
        f"{server.url}/account/profile", form={"first_name": "Mallory", "csrf": "forged"}
    )
    assert response.status == 403
    response = page.request.post(f"{server.url}/account/delete", form={"password": PASSWORD})
    assert response.status == 403
    me = person.client.me()
    assert me.first_name != "Mallory"


def test_the_data_is_downloaded_and_the_account_deleted(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD)
    with page.expect_download() as download:
        page.get_by_role("link", name="download as JSON").click()
    document = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert document["user_id"] == person.id

    page.get_by_label("Password, to confirm").fill("not the password")
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Password, to confirm").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("heading", name="Account deleted")).to_be_visible()
    assert_accessible(page)
    snapshot(page, "account-deleted")
    with pytest.raises(AuthenticationError):
        UMSClient(server.url).login(person.username, PASSWORD)


def test_an_idle_sign_in_ends(browser, page: Page):
    idle = Server(UMS_CONSOLE_IDLE_TIMEOUT="2s")
    try:
        person = Person(idle)
        sign_in(page, idle, person.username, PASSWORD)
        expect(page).to_have_url(f"{idle.url}/account")
        # Within the timeout, each request keeps the sign-in going.
        for _ in range(3):
            time.sleep(1.2)
            page.goto(f"{idle.url}/account")
            expect(page).to_have_url(f"{idle.url}/account")
        time.sleep(2.5)
        page.goto(f"{idle.url}/account")
        expect(page).to_have_url(f"{idle.url}/account/login?next=/account")
        # Its session ended with it: the account lists only the API client's.
        assert len(person.client.list_sessions()) == 1
    finally:
        idle.stop()


def test_the_security_dashboard_shows_failures_as_they_happen(page: Page, server: Server, person: Person):
    sign_in(page, server, ADMIN[0], ADMIN[2], path="/admin/security")
    expect(page.get_by_role("heading", name="Security", exact=True)).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(page.get_by_role("img", name="Failed sign-ins per hour")).to_be_visible()
    failed = page.locator("#count-failed")
    before = int(failed.text_content() or "0")
    rows = page.locator("#events tr")
    rows_before = rows.count()

    for _ in range(2):
        with pytest.raises(AuthenticationError):
            UMSClient(server.url).login(person.username, "wrong password")
    # No reload: the stream brings them.
    expect(rows).to_have_count(rows_before + 2, timeout=10_000)
    expect(rows.first).to_contain_text("auth.login_failed")
    expect(failed).to_have_text(str(before + 2))
    # The page as served counts them too, by address and by name.
    page.reload()
    expect(page.locator("section[aria-labelledby=accounts-heading] tr", has_text=person.username)).to_contain_text("2")
    assert_accessible(page)
    snapshot(page, "admin-security")


def test_a_lab_admin_manages_their_lab_and_is_refused_another(
    page: Page, server: Server, person: Person, admin_client: UMSClient
):
    suffix = person.username[-6:].upper()
    own = admin_client.create_lab(f"OWN{suffix}", "Own lab")
    other = admin_client.create_lab(f"OTH{suffix}", "Other lab")
    admin_client.add_member(own.id, person.id, "lab_admin")
    colleague = Person(server)
    admin_client.add_member(own.id, colleague.id, "member")

    sign_in(page, server, person.username, PASSWORD, path="/admin/labs")
    expect(page.get_by_role("heading", name="Labs")).to_be_visible()
    expect(page.get_by_role("link", name=own.code)).to_be_visible()
    expect(page.get_by_role("link", name=other.code)).to_have_count(0)
    page.get_by_role("link", name=own.code).click()
    expect(page.get_by_role("heading", name=f"Lab {own.code}")).to_be_visible()
    assert_accessible(page)
    snapshot(page, "lab")

    page.get_by_label("Email address").fill("newcomer@elsewhere.example.org")
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Send the invitation").click()
    expect(page.get_by_role("status")).to_contain_text("invitation was sent")
    invitations = page.locator("#invitations tr")
    expect(invitations.first).to_contain_text("newcomer@elsewhere.example.org")
    expect(invitations.first).to_contain_text("pending")
    page.get_by_role("button", name="Revoke the invitation of newcomer@elsewhere.example.org").click()
    expect(invitations.first).to_contain_text("revoked")

    page.get_by_label(f"Role of {colleague.username}", exact=True).select_option("viewer")
    page.get_by_role("button", name=f"Set the role of {colleague.username}").click()
    expect(page.get_by_role("status")).to_contain_text("role was changed")
    assert {m.user.id: m.role for m in admin_client.list_members(own.id)}[colleague.id] == "viewer"

    # Another lab's page is refused, as an id that does not exist is.
    page.goto(f"{server.url}/admin/labs/{other.id}")
    expect(page.get_by_role("alert")).to_contain_text("do not have this access")
    page.goto(f"{server.url}/admin/labs/999999")
    expect(page.get_by_role("alert")).to_contain_text("do not have this access")
    page.goto(f"{server.url}/admin/labs/{own.id}")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = page.request.post(
        f"{server.url}/admin/labs/{other.id}/invitations",
        form={"email": "x@example.org", "role": "member", "csrf": csrf or ""},
    )
    assert refused.status == 403
    assert "do not have this access" in refused.text()


def test_an_authenticator_app_is_set_up_and_turned_off_from_the_account(
    page: Page, server: Server, person: Person
):
    sign_in(page, server, person.username, PASSWORD)
    page.get_by_role("button", name="Set up an authenticator app").click()
    expect(page.get_by_role("img", name="QR code")).to_be_visible()
    assert_accessible(page)
    snapshot(page, "totp-setup")
    app = App.from_secret(page.locator("#totp-secret").text_content() or "")
    page.get_by_label("The code the app shows").fill(app.code())
    page.get_by_role("button", name="Turn on").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    snapshot(page, "totp-recovery-codes")
    recovery_code = page.locator("#recovery-codes li").first.text_content() or ""
    # A sign-in through the API now asks for the second factor.
    with pytest.raises(MFARequired):
        UMSClient(server.url).login(person.username, PASSWORD)

    # Turning it off takes a session that proved it: this one signed in with the password only.
    page.goto(f"{server.url}/account")
    expect(page.get_by_text("An authenticator app is on.")).to_be_visible()
    expect(page.get_by_text("10 of your recovery codes are left.")).to_be_visible()
    page.locator("#disable-password").fill(PASSWORD)
    page.get_by_label("A code of the app, or a recovery code").fill(recovery_code.strip())
    page.get_by_role("button", name="Turn the authenticator app off").click()
    expect(page.get_by_role("alert")).to_contain_text("Confirm it is you")

    page.get_by_role("button", name="Sign out", exact=True).first.click()
    sign_in(page, server, person.username, PASSWORD)
    page.get_by_label("Code").fill(app.code())
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{server.url}/account")
    page.locator("#disable-password").fill(PASSWORD)
    page.get_by_label("A code of the app, or a recovery code").fill(recovery_code.strip())
    page.get_by_role("button", name="Turn the authenticator app off").click()
    expect(page.get_by_role("status")).to_contain_text("turned off")
    UMSClient(server.url).login(person.username, PASSWORD)


def test_an_email_change_waits_for_the_link(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD)
    new_address = f"new-{person.email}"
    page.get_by_label("New email address").fill(new_address)
    page.locator("#email_password").fill("not the password")
    page.get_by_role("button", name="Change the address").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("New email address").fill(new_address)
    page.locator("#email_password").fill(PASSWORD)
    page.get_by_role("button", name="Change the address").click()
    expect(page.get_by_role("status")).to_contain_text("link was sent to the new address")
    assert person.client.me().email == person.email  # not before the link is opened


def test_an_admin_deactivates_resets_factors_and_reads_sign_in_attempts(
    page: Page, server: Server, person: Person
):
    app = App(person.client.enroll_totp().otpauth_uri)
    person.client.confirm_totp(app.code())
    with pytest.raises(AuthenticationError):
        UMSClient(server.url).login(person.username, "wrong password")

    sign_in(page, server, ADMIN[0], ADMIN[2], path=f"/admin?q={person.username}")
    page.get_by_role("button", name=f"Deactivate {person.username}").click()
    expect(page.get_by_role("status")).to_contain_text("account was changed")
    with pytest.raises(AuthenticationError):
        UMSClient(server.url).login(person.username, PASSWORD)
    page.goto(f"{server.url}/admin?q={person.username}")
    page.get_by_role("button", name=f"Activate {person.username}").click()
    expect(page.get_by_role("status")).to_contain_text("account was changed")

    page.goto(f"{server.url}/admin?q={person.username}")
    page.get_by_role("button", name=f"Reset the second factors of {person.username}").click()
    expect(page.get_by_role("status")).to_contain_text("second factors were removed")
    UMSClient(server.url).login(person.username, PASSWORD)  # the password alone, now

    page.get_by_role("link", name="Sign-in attempts").click()
    page.get_by_label("Name tried").fill(person.username)
    page.get_by_label("Outcome").select_option("false")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#attempts tr")).to_have_count(2)  # the wrong password, and the deactivated
    assert_accessible(page)
    snapshot(page, "admin-attempts")


def test_a_device_is_listed_and_forgotten(page: Page, server: Server, person: Person):
    sign_in(page, server, person.username, PASSWORD)
    devices = page.locator("#devices tr")
    expect(devices).to_have_count(2)  # the API client's, and this browser's
    page.get_by_role("button", name="Forget the device").first.click()
    expect(page.get_by_role("status")).to_contain_text("device was forgotten")
    expect(devices).to_have_count(1)


def test_a_system_admin_creates_a_lab_and_changes_its_settings(
    page: Page, server: Server, admin_client: UMSClient
):
    code = f"L{int(time.time() * 1000) % 10**9}"
    sign_in(page, server, ADMIN[0], ADMIN[2], path="/admin/labs")
    expect(page.get_by_role("heading", name="Labs")).to_be_visible()
    page.get_by_label("Code (letters, digits, _ and -)").fill(code)
    page.get_by_label("Name", exact=True).fill("Cryo-EM facility")
    page.get_by_label("Description").fill("Microscopes on level 2")
    page.get_by_role("button", name="Create the lab").click()
    expect(page.get_by_role("status")).to_contain_text("The lab was created")
    lab = next(lab for lab in admin_client.list_labs(per_page=100).items if lab.code == code)
    assert lab.name == "Cryo-EM facility" and lab.description == "Microscopes on level 2"
    assert lab.is_active and not lab.require_mfa
    assert_accessible(page)
    snapshot(page, "admin-lab-settings")

    page.get_by_label("Name", exact=True).fill("Cryo-EM core facility")
    page.get_by_label("Members must have a second factor").check()
    page.get_by_label("Active").uncheck()
    page.get_by_role("button", name="Save the settings").click()
    expect(page.get_by_role("status")).to_contain_text("settings were saved")
    lab = admin_client.get_lab(lab.id)
    assert lab.name == "Cryo-EM core facility" and lab.require_mfa and not lab.is_active
    updates = admin_client.list_audit_logs(action="lab.updated", resource_id=lab.id).items
    assert len(updates) == 1

    # A bad code changes nothing and says why on a page of the console.
    page.goto(f"{server.url}/admin/labs")
    page.get_by_label("Code (letters, digits, _ and -)").fill("no spaces allowed")
    page.get_by_label("Name", exact=True).fill("Bad")
    page.get_by_role("button", name="Create the lab").click()
    expect(page.get_by_role("alert")).to_contain_text("code")
    assert not [lab for lab in admin_client.list_labs(per_page=100).items if lab.name == "Bad"]


def test_long_lists_are_paged_and_a_malformed_address_gets_a_page(
    page: Page, server: Server
):
    ghost = f"ghost{int(time.time() * 1000) % 10**9}"
    with httpx.Client(base_url=server.url) as client:
        for _ in range(101):
            answer = client.post("/api/auth/login", json={"username": ghost, "password": "wrong"})
            assert answer.status_code in (401, 423)  # unknown names lock too
    sign_in(page, server, ADMIN[0], ADMIN[2], path=f"/admin/attempts?username={ghost}")
    expect(page.locator("#attempts tr")).to_have_count(100)
    expect(page.get_by_text("Page 1 of 2")).to_be_visible()
    assert_accessible(page)
    page.get_by_role("link", name="Next page").click()
    expect(page.locator("#attempts tr")).to_have_count(1)
    expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    expect(page.get_by_label("Name tried")).to_have_value(ghost)
    page.get_by_role("link", name="Previous page").click()
    expect(page.locator("#attempts tr")).to_have_count(100)

    answer = page.goto(f"{server.url}/admin/labs/not-a-number")
    assert answer is not None and answer.status == 400
    assert answer.headers["content-type"].startswith("text/html")
    expect(page.get_by_role("heading", name="That did not work")).to_be_visible()
    assert_accessible(page)


def test_signing_in_and_reaching_the_content_work_from_the_keyboard(
    page: Page, server: Server, person: Person
):
    page.goto(f"{server.url}/account/login")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the content")).to_be_focused()
    username = page.get_by_label("Username or email")
    for _ in range(5):
        if username.evaluate("element => element === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(username).to_be_focused()
    page.keyboard.type(person.username)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/account")
    # Every control of the account page is reached by Tab, and each shows where focus is.
    seen = set()
    for _ in range(80):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " const style = getComputedStyle(e);"
            " return [e.tagName, e.id || e.getAttribute('name') || e.textContent.trim(),"
            " style.outlineStyle !== 'none' || style.boxShadow !== 'none'] }"
        )
        if focused[0] == "BODY":  # past the last control
            break
        assert focused[2], f"no visible focus on {focused[:2]}"
        seen.add(focused[1])
    for control in ("first_name", "new_email", "current_password", "passkey-name", "Sign out everywhere"):
        assert control in seen, control
