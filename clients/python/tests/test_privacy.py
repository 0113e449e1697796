"""Privacy by design against the live server: lab admins invite by email address (and cannot
tell whether an account has it), member lists show addresses only to those who manage the lab,
a person exports everything UMS holds about them, and accepts the terms of service and privacy
notice in force (at registration, and at sign-in when they change).

Invitation and welcome emails are read from the server's log, where UMS writes its mail when
no SMTP is configured.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import zipfile
from typing import Any

import pytest

from conftest import (
    ISSUER,
    NEW_TERMS,
    PASSWORD,
    PRIVACY,
    TERMS,
    Account,
    UMSServer,
    enrol_totp,
    unique,
)
from ums_client import (
    AuthenticationError,
    Conflict,
    ConsentRequired,
    ConsentVersions,
    Invitation,
    Lab,
    LoginResult,
    Member,
    MFARequired,
    NotFound,
    PermissionDenied,
    SecondStepRequired,
    UMSClient,
    ValidationError,
)

INVITED = "You are invited to a lab"
SECTIONS = (
    "profile",
    "memberships",
    "sessions",
    "devices",
    "login_attempts",
    "second_factors",
    "consents",
    "invitations",
    "audit_events",
)


@pytest.fixture
def lab(admin) -> Lab:
    return admin.create_lab(unique("lab"), "A lab", "for tests")


@pytest.fixture
def boss(admin, new_account, lab) -> Account:
    """A lab_admin of ``lab``."""
    account = new_account()
    admin.add_member(lab.id, account.id, "lab_admin")
    return account


def verify_address(server: UMSServer, account: Account) -> None:
    """Verify the account's address with the link of its welcome email."""
    account.client.verify_email(server.wait_for_token(account.user.email, "Welcome"))
    assert account.client.me().email_verified is True


def shape(invitation: Invitation) -> dict[str, Any]:
    """The invitation without what differs by design between two invitations."""
    fields = dataclasses.asdict(invitation)
    for varying in ("id", "email", "created_at", "expires_at"):
        del fields[varying]
    return fields


def status_of(client: UMSClient, lab_id: int, invitation_id: int) -> str:
    """The status of one of the lab's invitations, as its list shows it."""
    return next(i.status for i in client.list_invitations(lab_id) if i.id == invitation_id)


def test_an_invitation_is_answered_alike_whether_or_not_the_address_has_an_account(
    ums, new_account, lab, boss
):
    known = new_account(login=False)
    stranger = f"{unique('nobody')}@example.org"

    # The address as typed; the server normalises it.
    to_known = boss.client.invite(lab.id, f"{known.username}@Example.ORG", "member")
    to_stranger = boss.client.invite(lab.id, stranger, "member")
    assert isinstance(to_known, Invitation)
    assert (to_known.lab_id, to_known.email, to_known.role) == (lab.id, known.user.email, "member")
    assert (to_known.status, to_known.answered_at) == ("pending", None)
    assert to_known.expires_at > to_known.created_at
    assert to_stranger.email == stranger
    assert to_known.id != to_stranger.id
    assert shape(to_known) == shape(to_stranger)

    # Both get an email; the address without an account is led through registration.
    mail_to_known = ums.wait_for_mail(known.user.email, INVITED)["body"]
    mail_to_stranger = ums.wait_for_mail(stranger, INVITED)["body"]
    assert f"{ISSUER}/invitations/accept?token=" in mail_to_known
    assert f"{ISSUER}/register?invitation=" in mail_to_stranger

    assert [i.id for i in boss.client.list_invitations(lab.id)] == [to_stranger.id, to_known.id]


def test_only_those_who_manage_the_lab_invite_and_list_invitations(admin, new_account, lab, boss):
    member = new_account()
    admin.add_member(lab.id, member.id, "member")
    with pytest.raises(PermissionDenied):
        member.client.invite(lab.id, f"{unique('x')}@example.org")
    with pytest.raises(PermissionDenied):
        member.client.list_invitations(lab.id)

    other = admin.create_lab(unique("other"), "Another lab")
    with pytest.raises(PermissionDenied):
        boss.client.invite(other.id, f"{unique('x')}@example.org")

    with pytest.raises(ValidationError) as bad:
        boss.client.invite(lab.id, "not an address", "owner")
    assert {"email", "role"} <= bad.value.errors.keys()
    assert boss.client.list_invitations(lab.id) == []

    # A system admin invites to any lab.
    assert admin.invite(other.id, f"{unique('y')}@example.org", "viewer").role == "viewer"


def test_the_invited_user_accepts_with_the_emailed_token_and_joins_the_lab(
    ums, new_account, lab, boss
):
    invitee, someone_else = new_account(), new_account()
    invitation = boss.client.invite(lab.id, invitee.user.email, "viewer")
    token = ums.wait_for_token(invitee.user.email, INVITED)

    # Only the account with the invited address, once verified, can take it up.
    verify_address(ums, someone_else)
    with pytest.raises(PermissionDenied):
        someone_else.client.accept_invitation(token)
    with pytest.raises(PermissionDenied):
        invitee.client.accept_invitation(token)  # not verified yet
    assert status_of(boss.client, lab.id, invitation.id) == "pending"

    verify_address(ums, invitee)
    member = invitee.client.accept_invitation(token)
    assert isinstance(member, Member)
    assert (member.user.id, member.user.username, member.role) == (
        invitee.id,
        invitee.username,
        "viewer",
    )
    members = {m.user.id: m.role for m in boss.client.list_members(lab.id)}
    assert members == {boss.id: "lab_admin", invitee.id: "viewer"}
    assert invitee.client.lab_access(lab.id).role == "viewer"

    (listed,) = boss.client.list_invitations(lab.id)
    assert (listed.id, listed.status) == (invitation.id, "accepted")
    assert listed.answered_at is not None

    with pytest.raises(ValidationError):
        invitee.client.accept_invitation(token)  # a link answers once


def test_a_declined_invitation_cannot_be_answered_again(make_client, ums, lab, boss):
    stranger = f"{unique('nobody')}@example.org"
    invitation = boss.client.invite(lab.id, stranger, "member")
    token = ums.wait_for_token(stranger, INVITED)  # the decline link's

    anonymous = make_client(ums)  # the link alone is enough: no sign-in
    assert anonymous.decline_invitation(token) is None
    assert status_of(boss.client, lab.id, invitation.id) == "declined"
    with pytest.raises(ValidationError):
        anonymous.decline_invitation(token)
    with pytest.raises(ValidationError):
        make_client(ums).decline_invitation("not-a-real-token")


def test_a_revoked_invitation_stops_working_and_cannot_be_revoked_again(
    admin, make_client, ums, lab, boss
):
    address = f"{unique('gina')}@example.org"
    invitation = boss.client.invite(lab.id, address, "viewer")
    token = ums.wait_for_token(address, INVITED)

    other = admin.create_lab(unique("other"), "Another lab")
    with pytest.raises(NotFound):
        admin.revoke_invitation(other.id, invitation.id)  # not one of that lab's

    assert boss.client.revoke_invitation(lab.id, invitation.id) is None
    assert status_of(boss.client, lab.id, invitation.id) == "revoked"
    with pytest.raises(Conflict):
        boss.client.revoke_invitation(lab.id, invitation.id)
    with pytest.raises(ValidationError):
        make_client(ums).decline_invitation(token)


def test_a_lab_admin_cannot_add_members_by_id(admin, new_account, lab, boss):
    newcomer = new_account()
    with pytest.raises(PermissionDenied):
        boss.client.add_member(lab.id, newcomer.id, "member")
    assert [m.user.id for m in boss.client.list_members(lab.id)] == [boss.id]

    assert admin.add_member(lab.id, newcomer.id, "member").user.id == newcomer.id


def test_member_addresses_are_shown_only_to_those_who_manage_the_lab(admin, new_account, lab, boss):
    member, viewer = new_account(), new_account()
    admin.add_member(lab.id, member.id, "member")
    admin.add_member(lab.id, viewer.id, "viewer")
    addresses = {a.id: a.user.email for a in (boss, member, viewer)}

    for manager in (boss.client, admin):
        assert {m.user.id: m.user.email for m in manager.list_members(lab.id)} == addresses
    for reader in (member.client, viewer.client):
        seen = reader.list_members(lab.id)
        assert {m.user.id: m.user.email for m in seen} == dict.fromkeys(addresses)
        assert {m.user.username for m in seen} == {boss.username, member.username, viewer.username}


def test_export_json_holds_the_profile_and_the_audit_events(admin, new_account):
    account = new_account(first_name="Ada")
    document = account.client.export_user_data(account.id)
    assert isinstance(document, dict)
    assert document["format"] == "ums-personal-data/1"
    assert document["user_id"] == account.id
    assert document["exported_at"]
    assert all(isinstance(document[section], list) for section in SECTIONS)
    (profile,) = document["profile"]
    assert (profile["id"], profile["username"], profile["email"], profile["first_name"]) == (
        account.id,
        account.username,
        account.user.email,
        "Ada",
    )
    actions = {event["action"] for event in document["audit_events"]}
    assert {"auth.register", "auth.login"} <= actions
    assert len(document["sessions"]) == 1
    assert "password_hash" not in str(document)

    assert admin.export_user_data(account.id)["user_id"] == account.id  # admins may too
    other = new_account()
    with pytest.raises(PermissionDenied):
        other.client.export_user_data(account.id)
    with pytest.raises(ValidationError):
        account.client.export_user_data(account.id, "pdf")


def test_a_person_erases_their_account_and_its_events_read_as_erased(admin, new_account):
    account = new_account()
    with pytest.raises(ValidationError):
        account.client.erase_my_account("not the password")
    assert admin.get_user(account.id).id == account.id  # a wrong password erases nothing

    assert account.client.erase_my_account(PASSWORD) == {"status": "erased", "erase_after": None}
    with pytest.raises(NotFound):
        admin.get_user(account.id)
    with pytest.raises(AuthenticationError):
        account.client.login(account.username, PASSWORD)
    events = admin.list_audit_logs(user_id=account.id, per_page=100).items
    assert events and all(event.erased for event in events)
    assert all(event.actor_ip is None and "username" not in event.details for event in events)
    with pytest.raises(NotFound):
        admin.cancel_erasure(account.id)  # nothing waits: it was carried out at once


def test_export_zip_holds_one_csv_per_section(new_account):
    account = new_account()
    data = account.client.export_user_data(account.id, "zip")
    assert isinstance(data, bytes)
    assert zipfile.is_zipfile(io.BytesIO(data))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert names == {"README.txt", *(f"{section}.csv" for section in SECTIONS)}
        assert "ums-personal-data/1" in archive.read("README.txt").decode()
        profile = list(csv.DictReader(io.StringIO(archive.read("profile.csv").decode())))
        events = archive.read("audit_events.csv").decode()
    assert [(row["username"], row["email"]) for row in profile] == [
        (account.username, account.user.email)
    ]
    assert "auth.register" in events


# -- consent ------------------------------------------------------------------------------


def consenting_account(make_client, server: UMSServer) -> tuple[UMSClient, str]:
    """A new account on a server asking for consent, registered accepting the versions in
    force there (:data:`TERMS`, :data:`PRIVACY`); returns its client (not signed in) and its
    username."""
    client = make_client(server)
    username = unique()
    client.register(
        username, f"{username}@example.org", PASSWORD, accept_terms=TERMS, accept_privacy=PRIVACY
    )
    return client, username


def test_the_versions_in_force_are_read_without_a_sign_in(make_client, ums, consenting):
    assert make_client(consenting).consent_versions() == ConsentVersions(TERMS, PRIVACY)
    assert make_client(ums).consent_versions() == ConsentVersions(None, None)


def test_a_registration_must_accept_the_versions_in_force(make_client, consenting):
    client = make_client(consenting)
    username = unique()
    email = f"{username}@example.org"

    with pytest.raises(ValidationError) as missing:
        client.register(username, email, PASSWORD)
    assert {"accept_terms", "accept_privacy"} <= missing.value.errors.keys()
    with pytest.raises(ValidationError) as stale:
        client.register(username, email, PASSWORD, accept_terms="2025-12", accept_privacy=PRIVACY)
    assert "accept_terms" in stale.value.errors
    assert "accept_privacy" not in stale.value.errors
    with pytest.raises(AuthenticationError):
        client.login(username, PASSWORD)  # nothing was created

    user = client.register(username, email, PASSWORD, accept_terms=TERMS, accept_privacy=PRIVACY)
    assert user.username == username
    # Accepted at registration: the sign-in is not asked again.
    assert client.login(username, PASSWORD).user.id == user.id


def test_new_terms_are_accepted_at_the_next_sign_in(make_client, consenting, renewed_terms):
    _, username = consenting_account(make_client, consenting)
    client = make_client(renewed_terms)

    with pytest.raises(ConsentRequired) as asked:
        client.login(username, PASSWORD)
    step = asked.value
    assert isinstance(step, SecondStepRequired) and isinstance(step, AuthenticationError)
    assert (step.status, step.code, step.methods) == (401, "consent_required", ("consent",))
    assert step.mfa_token and step.expires_in and step.expires_in > 0
    assert client.tokens is None  # no session yet
    assert client.consent_versions() == ConsentVersions(NEW_TERMS, PRIVACY)

    # The old version is refused, and the token stays usable.
    with pytest.raises(ValidationError) as stale:
        client.login_consent(step.mfa_token, accept_terms=TERMS, accept_privacy=PRIVACY)
    assert "accept_terms" in stale.value.errors
    with pytest.raises(ValidationError):
        client.login_consent(step.mfa_token)  # nothing accepted
    assert client.tokens is None

    result = client.login_consent(step.mfa_token, accept_terms=NEW_TERMS, accept_privacy=PRIVACY)
    assert isinstance(result, LoginResult)
    assert result.user.username == username
    assert client.tokens == result.tokens
    assert client.me().username == username

    with pytest.raises(AuthenticationError) as spent:
        make_client(renewed_terms).login_consent(
            step.mfa_token, accept_terms=NEW_TERMS, accept_privacy=PRIVACY
        )
    assert not isinstance(spent.value, SecondStepRequired)
    # Accepted once, not asked again; the export lists every acceptance.
    again = make_client(renewed_terms)
    assert again.login(username, PASSWORD).user.username == username
    document = again.export_user_data(result.user.id)
    accepted = [(c["document"], c["version"]) for c in document["consents"]]
    assert accepted == [("terms", TERMS), ("privacy", PRIVACY), ("terms", NEW_TERMS)]
    assert all(c["accepted_at"] for c in document["consents"])


def test_new_terms_can_be_accepted_in_the_login_itself(make_client, consenting, renewed_terms):
    _, username = consenting_account(make_client, consenting)
    client = make_client(renewed_terms)

    with pytest.raises(ValidationError) as stale:
        client.login(username, PASSWORD, accept_terms=TERMS, accept_privacy=PRIVACY)
    assert "accept_terms" in stale.value.errors
    assert client.tokens is None

    result = client.login(username, PASSWORD, accept_terms=NEW_TERMS, accept_privacy=PRIVACY)
    assert result.user.username == username
    assert client.tokens == result.tokens
    assert make_client(renewed_terms).login(username, PASSWORD).user.username == username


def test_after_the_consent_an_account_with_a_second_factor_proves_it(
    make_client, consenting, renewed_terms
):
    client, username = consenting_account(make_client, consenting)
    client.login(username, PASSWORD)
    app, _ = enrol_totp(client)
    renewed = make_client(renewed_terms)

    with pytest.raises(ConsentRequired) as asked:
        renewed.login(username, PASSWORD)
    with pytest.raises(MFARequired) as second:
        renewed.login_consent(asked.value.mfa_token, accept_terms=NEW_TERMS, accept_privacy=PRIVACY)
    assert second.value.mfa_token and second.value.mfa_token != asked.value.mfa_token
    assert "totp" in second.value.methods
    assert renewed.tokens is None

    result = renewed.login_mfa(second.value.mfa_token, "totp", code=app.code())
    assert result.user.username == username
    assert renewed.me().username == username
