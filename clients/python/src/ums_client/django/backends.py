"""Authentication backend: credentials are checked by UMS, users mirrored locally."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model, user_logged_in
from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest

from ..errors import AccountLocked, AuthenticationError, RateLimited, ValidationError
from ..models import User as RemoteUser
from .store import SessionTokenStore, make_client

__all__ = ["UMSBackend", "sync_user"]


def sync_user(remote: RemoteUser) -> AbstractBaseUser:
    """Create or update the local user mirroring a UMS user (matched by username).

    Copies email, first and last name, ``is_active``, and ``is_admin`` into both
    ``is_staff`` and ``is_superuser`` (for the fields the user model has). A new local user
    gets an unusable password: only UMS checks passwords.
    """
    model = get_user_model()
    username_field = str(model.USERNAME_FIELD)

    def has_field(name: str) -> bool:
        try:
            model._meta.get_field(name)
        except FieldDoesNotExist:
            return False
        return True

    wanted: dict[str, Any] = {
        username_field: remote.username,
        "email": remote.email,
        "first_name": remote.first_name,
        "last_name": remote.last_name,
        "is_active": remote.is_active,
        "is_staff": remote.is_admin,
        "is_superuser": remote.is_admin,
    }
    wanted = {k: v for k, v in wanted.items() if has_field(k)}
    lookup = {f"{username_field}__iexact": remote.username}
    user: AbstractBaseUser | None = model._default_manager.filter(**lookup).first()
    if user is None:
        user = model(**wanted)
        user.set_unusable_password()
        user.save()
        return user
    changed = [k for k, v in wanted.items() if getattr(user, k) != v]
    if changed:
        for name in changed:
            setattr(user, name, wanted[name])
        user.save(update_fields=changed)
    return user


class UMSBackend(BaseBackend):
    """``AUTHENTICATION_BACKENDS = ["ums_client.django.backends.UMSBackend"]``.

    ``authenticate(request, username=..., password=..., totp_code=None)`` logs in to UMS
    (username or email). On success the local user is created or updated, and when
    ``django.contrib.auth.login`` follows, the UMS tokens are put in the session. A locked
    account or a blocked IP stops authentication and is left on ``request.ums_error``.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        totp_code: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        if not username or password is None:
            return None
        with make_client() as client:
            try:
                result = client.login(username, password, totp_code)
            except (AuthenticationError, ValidationError):
                return None
            except (AccountLocked, RateLimited) as exc:
                if request is not None:
                    request.ums_error = exc  # type: ignore[attr-defined]
                raise DjangoPermissionDenied(str(exc)) from exc
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
        del user.ums_login


user_logged_in.connect(_store_tokens, dispatch_uid="ums_client.django.store_tokens")
