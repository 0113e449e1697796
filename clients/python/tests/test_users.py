"""/api/users against the live server."""

from __future__ import annotations

import pytest

from conftest import PASSWORD, unique
from ums_client import AuthenticationError, NotFound, Page, PermissionDenied, User, ValidationError


def test_admin_lists_users_with_filters_and_pages(admin, new_account):
    tag = unique("list")
    first = new_account(login=False)
    second = new_account(login=False)
    for account in (first, second):
        admin.update_user(account.id, username=f"{tag}-{account.id}")

    found = admin.list_users(q=tag)
    assert isinstance(found, Page)
    assert found.total == 2
    assert {u.id for u in found} == {first.id, second.id}
    assert all(isinstance(u, User) for u in found.items)

    paged = admin.list_users(q=tag, per_page=1, page=2)
    assert (paged.total, paged.page, paged.per_page, paged.pages) == (2, 2, 1, 2)
    assert len(paged) == 1 and not paged.has_next

    assert admin.list_users(q=tag, is_admin=True).total == 0
    admin.update_user(first.id, is_active=False)
    inactive = admin.list_users(q=tag, is_active=False)
    assert [u.id for u in inactive] == [first.id]

    assert admin.list_users(per_page=1000).per_page == 100  # clamped
    empty = admin.list_users(q=unique("nobody"))
    assert (empty.total, empty.pages, empty.items) == (0, 0, ())


def test_bad_page_is_a_validation_error(admin):
    with pytest.raises(ValidationError) as excinfo:
        admin.list_users(page=0)
    assert excinfo.value.status == 400
    assert "page" in excinfo.value.errors


def test_non_admin_cannot_list_users(new_account):
    with pytest.raises(PermissionDenied) as excinfo:
        new_account().client.list_users()
    assert excinfo.value.status == 403
    assert excinfo.value.code == "forbidden"


def test_get_user_self_or_admin_only(admin, new_account):
    account, stranger = new_account(), new_account()
    assert account.client.get_user(account.id).username == account.username
    assert admin.get_user(account.id).id == account.id
    with pytest.raises(PermissionDenied):
        stranger.client.get_user(account.id)
    with pytest.raises(NotFound) as excinfo:
        admin.get_user(10_000_000)
    assert excinfo.value.status == 404


def test_self_updates_names_with_patch_and_put(new_account):
    account = new_account(first_name="Old", last_name="Name")
    patched = account.client.update_user(account.id, first_name="New")
    assert (patched.first_name, patched.last_name) == ("New", "Name")
    assert patched.updated_at >= account.user.updated_at

    replaced = account.client.replace_user(account.id, first_name="Put", last_name="Whole")
    assert (replaced.first_name, replaced.last_name) == ("Put", "Whole")
    assert account.client.me().first_name == "Put"


def test_non_admin_sending_admin_fields_is_forbidden(new_account):
    account = new_account()
    with pytest.raises(PermissionDenied) as excinfo:
        account.client.update_user(account.id, is_admin=True)
    assert "administrators" in (excinfo.value.detail or "")
    assert account.client.me().is_admin is False


def test_admin_changes_admin_fields(admin, new_account, make_client, ums):
    account = new_account(login=False)
    new_email = f"{unique('mail')}@Example.ORG"
    updated = admin.replace_user(
        account.id, first_name="F", last_name="L", email=new_email, is_admin=True
    )
    assert updated.email == new_email.lower()
    assert updated.is_admin
    promoted = make_client(ums).login(new_email, PASSWORD)
    assert promoted.user.is_admin


def test_admin_deactivates_user_and_its_sessions_end(admin, new_account):
    account = new_account()
    assert admin.update_user(account.id, is_active=False).is_active is False
    with pytest.raises(AuthenticationError):
        account.client.me()


def test_admin_deletes_user(admin, new_account, make_client, ums):
    account = new_account(login=False)
    assert admin.delete_user(account.id) is None
    with pytest.raises(NotFound):
        admin.get_user(account.id)
    with pytest.raises(AuthenticationError):
        make_client(ums).login(account.username, PASSWORD)
    with pytest.raises(NotFound):
        admin.delete_user(account.id)


def test_non_admin_cannot_delete(new_account):
    account, other = new_account(), new_account()
    with pytest.raises(PermissionDenied):
        account.client.delete_user(other.id)


def test_user_labs_lists_memberships(admin, new_account):
    account, stranger = new_account(), new_account()
    lab = admin.create_lab(unique("ul"), "User labs")
    admin.add_member(lab.id, account.id, "viewer")
    memberships = account.client.get_user_labs(account.id)
    assert [(m.id, m.code, m.role, m.is_active) for m in memberships] == [
        (lab.id, lab.code, "viewer", True)
    ]
    assert admin.get_user_labs(account.id) == memberships
    with pytest.raises(PermissionDenied):
        stranger.client.get_user_labs(account.id)
