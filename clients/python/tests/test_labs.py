"""/api/labs against the live server."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import unique
from ums_client import (
    AccessInfo,
    Conflict,
    Lab,
    Member,
    NotFound,
    PermissionDenied,
    ValidationError,
)


@pytest.fixture
def lab(admin) -> Lab:
    return admin.create_lab(unique("lab"), "A lab", "for tests")


def test_admin_creates_reads_updates_and_deletes_a_lab(admin):
    code = unique("crud")
    lab = admin.create_lab(code, "Crud lab", "first")
    assert isinstance(lab, Lab)
    assert (lab.code, lab.name, lab.description, lab.is_active) == (code, "Crud lab", "first", True)
    assert admin.get_lab(lab.id) == lab

    patched = admin.update_lab(lab.id, description="second")
    assert (patched.name, patched.description) == ("Crud lab", "second")
    replaced = admin.replace_lab(lab.id, code=code + "x", name="Renamed", description="third")
    assert (replaced.code, replaced.name, replaced.description) == (code + "x", "Renamed", "third")
    assert replaced.updated_at >= lab.updated_at

    assert admin.delete_lab(lab.id) is None
    with pytest.raises(NotFound):
        admin.get_lab(lab.id)


def test_lab_listing_admin_sees_all_members_their_own(admin, new_account, lab):
    member, outsider = new_account(), new_account()
    other = admin.create_lab(unique("other"), "Other lab")
    admin.add_member(lab.id, member.id, "viewer")

    assert {lab.id, other.id} <= {x.id for x in admin.list_labs(per_page=100)}
    mine = member.client.list_labs()
    assert [x.id for x in mine] == [lab.id]
    assert mine.total == 1
    assert outsider.client.list_labs().total == 0


def test_only_admins_create_and_edit_labs(new_account, lab):
    account = new_account()
    with pytest.raises(PermissionDenied):
        account.client.create_lab(unique("no"), "No")
    with pytest.raises(PermissionDenied):
        account.client.update_lab(lab.id, name="hijacked")


def test_invalid_and_duplicate_lab_codes(admin, lab):
    with pytest.raises(ValidationError) as bad:
        admin.create_lab("x", "too short a code")
    assert "code" in bad.value.errors
    with pytest.raises(Conflict) as dup:
        admin.create_lab(lab.code, "same code")
    assert dup.value.status == 409
    assert "code" in dup.value.errors


def test_deactivated_lab_is_closed_to_members(admin, new_account, lab):
    member = new_account()
    admin.add_member(lab.id, member.id, "member")
    assert member.client.get_lab(lab.id).id == lab.id

    assert admin.deactivate_lab(lab.id).is_active is False
    with pytest.raises(PermissionDenied):
        member.client.get_lab(lab.id)
    with pytest.raises(PermissionDenied):
        member.client.lab_access(lab.id)

    assert admin.activate_lab(lab.id).is_active is True
    assert member.client.lab_access(lab.id).role == "member"


def test_membership_lifecycle(admin, new_account, lab):
    account = new_account(first_name="Marie")
    member = admin.add_member(lab.id, account.id, "viewer")
    assert isinstance(member, Member)
    assert (member.user.id, member.user.username, member.user.first_name, member.role) == (
        account.id,
        account.username,
        "Marie",
        "viewer",
    )

    listed = admin.list_members(lab.id)
    assert listed == [member]
    assert member.user.email == account.user.email
    # Members may list too, without the addresses (those are for whoever manages the lab).
    hidden = dataclasses.replace(member, user=dataclasses.replace(member.user, email=None))
    assert account.client.list_members(lab.id) == [hidden]

    promoted = admin.set_member_role(lab.id, account.id, "member")
    assert promoted.role == "member"
    assert promoted.joined_at == member.joined_at

    with pytest.raises(Conflict) as dup:
        admin.add_member(lab.id, account.id, "viewer")
    assert "user_id" in dup.value.errors
    with pytest.raises(ValidationError) as bad_role:
        admin.add_member(lab.id, new_account(login=False).id, "boss")
    assert "role" in bad_role.value.errors

    assert admin.remove_member(lab.id, account.id) is None
    assert admin.list_members(lab.id) == []
    with pytest.raises(PermissionDenied):
        account.client.get_lab(lab.id)


def test_lab_admin_manages_members_but_keeps_one_lab_admin(admin, new_account, lab):
    boss, newcomer = new_account(), new_account()
    admin.add_member(lab.id, boss.id, "lab_admin")
    # Adding by id is the system admin's; lab admins invite by address (test_privacy.py).
    admin.add_member(lab.id, newcomer.id, "viewer")
    assert boss.client.set_member_role(lab.id, newcomer.id, "member").role == "member"

    with pytest.raises(Conflict) as last_admin:
        boss.client.set_member_role(lab.id, boss.id, "member")
    assert "role" in last_admin.value.errors
    with pytest.raises(PermissionDenied):
        newcomer.client.remove_member(lab.id, boss.id)

    boss.client.remove_member(lab.id, newcomer.id)
    assert [m.user.id for m in boss.client.list_members(lab.id)] == [boss.id]


@pytest.mark.parametrize(
    ("role", "permissions"),
    [
        ("viewer", ("read",)),
        ("member", ("read", "write")),
        ("lab_admin", ("read", "write", "manage_members")),
    ],
)
def test_access_reports_role_and_permissions(admin, new_account, lab, role, permissions):
    account = new_account()
    admin.add_member(lab.id, account.id, role)
    access = account.client.lab_access(lab.id)
    assert access == AccessInfo(lab_id=lab.id, role=role, permissions=permissions)
    assert access.can("read") and access.can("manage_members") == (role == "lab_admin")


def test_access_for_admin_and_outsiders(admin, new_account, lab):
    assert admin.lab_access(lab.id) == AccessInfo(
        lab_id=lab.id, role="admin", permissions=("read", "write", "manage_members")
    )
    outsider = new_account()
    with pytest.raises(PermissionDenied):
        outsider.client.lab_access(lab.id)
    # A non-admin cannot tell a missing lab from a foreign one.
    with pytest.raises(PermissionDenied):
        outsider.client.lab_access(10_000_000)
    with pytest.raises(PermissionDenied):
        outsider.client.get_lab(lab.id)
    with pytest.raises(PermissionDenied):
        outsider.client.list_members(lab.id)
