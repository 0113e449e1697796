"""Authentication backend: credentials are checked by UMS, users mirrored locally."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model, user_logged_in
from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import IntegrityError, transaction
from django.http import HttpRequest

from ..errors import (
    AccountLocked,
    AuthenticationError,
    MFARequired,
    PermissionDenied,
    RateLimited,
    SecondStepRequired,
    ValidationError,
)
from ..models import LoginResult
from ..models import User as RemoteUser
from .mfa import count_wrong_answer, forget_pending_mfa, pending_mfa, remember_pending_mfa
from .store import SessionTokenStore, make_client

if TYPE_CHECKING:
    from .models import UmsIdentity

__all__ = ["UMSBackend", "sync_user"]

# Concurrent first logins can race on the unique UMS id or username: retry that often.
_SYNC_ATTEMPTS = 3


def _identity_model() -> type[UmsIdentity]:
    """The link table, with a clear error when the app was not installed."""
    if not apps.is_installed("ums_client.django"):
        raise ImproperlyConfigured(
            'add "ums_client.django" to INSTALLED_APPS and run migrate: local users are linked '
            "to UMS accounts by UMS id in its table, never by username"
        )
    from .models import UmsIdentity

    return UmsIdentity


def sync_user(remote: RemoteUser) -> AbstractBaseUser:
    """Create or update the local user mirroring a UMS user, matched by its UMS id.

    The link is a :class:`~ums_client.django.models.UmsIdentity` row. Usernames are not
    matched: UMS lets an admin rename an account, and a renamed or deleted account's username
    can be registered again by someone else, who must not inherit the old owner's local row
    (its permissions, objects and history). A new local user gets the UMS username, or
    ``<username>-2``, ``-3``... when another local row (of another UMS user, or a purely local
    account) already has it, case-insensitively; that row is left untouched. A linked user
    follows renames in UMS the same way.

    Copies email, first and last name, ``is_active``, and ``is_admin`` into both
    ``is_staff`` and ``is_superuser`` (for the fields the user model has). A new local user
    gets an unusable password: only UMS checks passwords.
    """
    identities = _identity_model()
    for attempt in range(_SYNC_ATTEMPTS):
        try:
            with transaction.atomic():
                return _sync(identities, remote)
        except IntegrityError:
            # Another request linked this UMS user, or took the username, meanwhile: look again.
            if attempt == _SYNC_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _sync(identities: type[UmsIdentity], remote: RemoteUser) -> AbstractBaseUser:
    model = get_user_model()
    username_field = str(model.USERNAME_FIELD)

    def has_field(name: str) -> bool:
        try:
            model._meta.get_field(name)
        except FieldDoesNotExist:
            return False
        return True

    wanted: dict[str, Any] = {
        "email": remote.email,
        "first_name": remote.first_name,
        "last_name": remote.last_name,
        "is_active": remote.is_active,
        "is_staff": remote.is_admin,
        "is_superuser": remote.is_admin,
    }
    wanted = {k: v for k, v in wanted.items() if has_field(k)}
    identity = identities._default_manager.select_related("user").filter(ums_id=remote.id).first()
    user: AbstractBaseUser | None = identity.user if identity is not None else None
    if user is None:
        user = _adoptable_user(model, username_field, remote.username)
        if user is None:
            username = _free_username(model, username_field, remote.username)
            user = model(**wanted, **{username_field: username})
            user.set_unusable_password()
            user.save()
            identities._default_manager.create(user=user, ums_id=remote.id)
            return user
        identities._default_manager.create(user=user, ums_id=remote.id)
    current = str(getattr(user, username_field))
    if not _is_name_for(current, remote.username):
        wanted[username_field] = _free_username(model, username_field, remote.username, user.pk)
    changed = [k for k, v in wanted.items() if getattr(user, k) != v]
    if changed:
        for name in changed:
            setattr(user, name, wanted[name])
        user.save(update_fields=changed)
    return user


def _is_name_for(local: str, remote: str) -> bool:
    """Whether ``local`` is what :func:`_free_username` gives ``remote`` (kept as it is).

    A user who got ``alice-2`` keeps it even once ``alice`` is free again: local names should
    not move under people's feet.
    """
    return local == remote or re.fullmatch(rf"{re.escape(remote)}-[0-9]+", local) is not None


def _free_username(
    model: type[AbstractBaseUser], field: str, wanted: str, exclude_pk: Any = None
) -> str:
    """``wanted``, or ``wanted-2``, ``wanted-3``... the first no other local user has."""
    others = model._default_manager.all()
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    max_length = getattr(model._meta.get_field(field), "max_length", None)
    candidate, n = wanted, 1
    while others.filter(**{f"{field}__iexact": candidate}).exists():
        n += 1
        suffix = f"-{n}"
        base = wanted[: max_length - len(suffix)] if max_length else wanted
        candidate = base + suffix
    return candidate


def _adoptable_user(
    model: type[AbstractBaseUser], username_field: str, username: str
) -> AbstractBaseUser | None:
    """A local mirror made before users were linked by UMS id, if it may be taken over.

    Only with ``settings.UMS_ADOPT_UNLINKED_USERS`` (off by default), and only an unlinked
    user with an unusable password (as this backend creates them; never an account that
    logs in locally, such as one made by ``createsuperuser``). Adopting goes by username, the
    very thing the link exists to avoid, so it is meant for the upgrade only: turn it off once
    the users of the old mirrors have logged in again.
    """
    if not getattr(settings, "UMS_ADOPT_UNLINKED_USERS", False):
        return None
    candidates: Iterable[AbstractBaseUser] = model._default_manager.filter(
        **{f"{username_field}__iexact": username, "ums_identity__isnull": True}
    )
    for user in candidates:
        if not user.has_usable_password():
            return user
    return None


class UMSBackend(BaseBackend):
    """``AUTHENTICATION_BACKENDS = ["ums_client.django.backends.UMSBackend"]``.

    ``authenticate(request, username=..., password=..., totp_code=None)`` logs in to UMS
    (username or email), for the browser of ``request`` (its device id and headers, see
    :mod:`ums_client.django.devices`). On success the local user is created or updated, and
    when ``django.contrib.auth.login`` follows, the UMS tokens are put in the session. A
    locked account, a blocked IP, a sign-in from a denylisted address
    (:class:`~ums_client.PermissionDenied`), or an account that must reset its password
    (:class:`~ums_client.PasswordResetRequired`) stops authentication and is left on
    ``request.ums_error``.

    A right password for an account with a second factor stops authentication too: the
    :class:`~ums_client.MFARequired` error is left on ``request.ums_error`` and the sign-in's
    ``mfa_token`` kept in the session (see :mod:`ums_client.django.mfa`; the password is not
    kept), and so does a risky sign-in that UMS confirms with an emailed code
    (:class:`~ums_client.VerificationRequired`, answered with ``mfa_method="email_code"``).
    ``authenticate(request, mfa_method=..., mfa_code=... or mfa_assertion=...)`` then answers
    it (``POST /api/auth/login/mfa``) and returns the user as a one-step login does;
    ``None`` if the answer is refused (the error is on ``request.ums_error``, and after three
    refusals the pending step is dropped) or nothing is pending.

    A sign-in of an account that has not accepted the terms of service or privacy notice in
    force is kept pending the same way (:class:`~ums_client.ConsentRequired`);
    ``authenticate(request, accept_terms=..., accept_privacy=...)`` (no username) accepts the
    versions (``POST /api/auth/login/consent``) and returns the user, or ``None`` with the
    next step pending (a second factor) or the error on ``request.ums_error`` (a stale
    version: the step stays pending; a dead token: it is dropped). Passed with ``username``
    and ``password``, the two accept in the login itself.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        totp_code: str | None = None,
        mfa_method: str | None = None,
        mfa_code: str | None = None,
        mfa_assertion: dict[str, Any] | None = None,
        accept_terms: str | None = None,
        accept_privacy: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        if mfa_method is not None:
            if request is None:
                return None
            return self._second_step(request, mfa_method, mfa_code, mfa_assertion)
        if not username and (accept_terms is not None or accept_privacy is not None):
            if request is None:
                return None
            return self._consent_step(request, accept_terms, accept_privacy)
        if not username or password is None:
            return None
        with make_client(request=request, signing_in=True) as client:
            try:
                result = client.login(
                    username,
                    password,
                    totp_code,
                    accept_terms=accept_terms,
                    accept_privacy=accept_privacy,
                )
            except SecondStepRequired as exc:
                # The password was right but does not suffice: no other backend may let the
                # user in on it. The view asks for the second step.
                if request is not None:
                    remember_pending_mfa(request, exc)
                    request.ums_error = exc  # type: ignore[attr-defined]
                raise DjangoPermissionDenied(str(exc)) from exc
            except (AuthenticationError, ValidationError):
                return None
            except (AccountLocked, RateLimited, PermissionDenied) as exc:
                if request is not None:
                    request.ums_error = exc  # type: ignore[attr-defined]
                raise DjangoPermissionDenied(str(exc)) from exc
        return self._signed_in(result)

    def _second_step(
        self,
        request: HttpRequest,
        method: str,
        code: str | None,
        assertion: dict[str, Any] | None,
    ) -> AbstractBaseUser | None:
        pending = pending_mfa(request)
        if pending is None or pending.consenting:
            return None  # nothing pending, or it expired: sign in again
        with make_client(request=request, signing_in=True) as client:
            try:
                result = client.login_mfa(pending.mfa_token, method, code, assertion)
            except MFARequired as exc:
                # A passkey asked for without an assertion: fresh options on the same token.
                remember_pending_mfa(request, exc, pending.wrong_answers)
                request.ums_error = exc  # type: ignore[attr-defined]
                return None
            except AuthenticationError as exc:
                count_wrong_answer(request, pending)
                request.ums_error = exc  # type: ignore[attr-defined]
                return None
            except ValidationError as exc:  # no code given, unknown method: not counted
                request.ums_error = exc  # type: ignore[attr-defined]
                return None
            except (AccountLocked, RateLimited) as exc:
                forget_pending_mfa(request)
                request.ums_error = exc  # type: ignore[attr-defined]
                raise DjangoPermissionDenied(str(exc)) from exc
        return self._signed_in(result)

    def _consent_step(
        self, request: HttpRequest, accept_terms: str | None, accept_privacy: str | None
    ) -> AbstractBaseUser | None:
        pending = pending_mfa(request)
        if pending is None or not pending.consenting:
            return None  # nothing pending, or it expired: sign in again
        with make_client(request=request, signing_in=True) as client:
            try:
                result = client.login_consent(pending.mfa_token, accept_terms, accept_privacy)
            except SecondStepRequired as exc:
                # Accepted; the sign-in goes on to its second factor (or an emailed code).
                remember_pending_mfa(request, exc)
                request.ums_error = exc  # type: ignore[attr-defined]
                return None
            except ValidationError as exc:  # a version missing or not in force: still pending
                request.ums_error = exc  # type: ignore[attr-defined]
                return None
            except AuthenticationError as exc:  # the token is used or expired
                forget_pending_mfa(request)
                request.ums_error = exc  # type: ignore[attr-defined]
                return None
            except (AccountLocked, RateLimited, PermissionDenied) as exc:
                forget_pending_mfa(request)
                request.ums_error = exc  # type: ignore[attr-defined]
                raise DjangoPermissionDenied(str(exc)) from exc
        return self._signed_in(result)

    def _signed_in(self, result: LoginResult) -> AbstractBaseUser | None:
        user = sync_user(result.user)
        if not getattr(user, "is_active", True):
            return None
        user.ums_login = result  # type: ignore[attr-defined]
        return user

    def get_user(self, user_id: Any) -> AbstractBaseUser | None:
        user: AbstractBaseUser | None = get_user_model()._default_manager.filter(pk=user_id).first()
        return user


def _store_tokens(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    # After login(): it may have flushed the session, so the tokens are saved only now.
    result = getattr(user, "ums_login", None)
    if result is not None and request is not None:
        SessionTokenStore(request.session).save(result.tokens)
        forget_pending_mfa(request)
        del user.ums_login


user_logged_in.connect(_store_tokens, dispatch_uid="ums_client.django.store_tokens")
