"""View decorators that ask UMS who may see what."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from django.conf import settings
from django.contrib.auth import logout as auth_logout
from django.core.cache import cache
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest, HttpResponse

from ..errors import AuthenticationError, NotFound, PermissionDenied, StepUpRequired
from .store import SessionTokenStore, get_client, token_claims

__all__ = [
    "ROLE_RANK",
    "require_amr",
    "require_lab_access",
    "session_amr",
    "ums_admin_required",
    "ums_login_required",
    "ums_mfa_required",
]

View = TypeVar("View", bound=Callable[..., HttpResponse])

#: Lab roles from least to most; a system admin (``admin``) passes every check.
ROLE_RANK = {"viewer": 1, "member": 2, "lab_admin": 3, "admin": 4}


def _to_login(request: HttpRequest, login_url: str | None = None) -> HttpResponse:
    from django.contrib.auth.views import redirect_to_login

    return redirect_to_login(request.get_full_path(), login_url)


def ums_login_required(view: View) -> View:
    """Let through only users logged in through UMS (others go to ``settings.LOGIN_URL``).

    If UMS says the session has ended while the view runs (401 after a failed refresh), the
    user is logged out of Django and sent to the login page.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        tokens = SessionTokenStore(request.session).load()
        if not request.user.is_authenticated or tokens is None:
            return _to_login(request)
        try:
            return view(request, *args, **kwargs)
        except AuthenticationError:
            auth_logout(request)
            return _to_login(request)

    return cast(View, wrapper)


def ums_admin_required(view: View) -> View:
    """Like :func:`ums_login_required`, and 403 unless UMS says now that the user is an admin.

    The ``is_admin`` claim of the access token is not trusted: it was true when the token was
    issued and stays in it until the token expires (an hour by default), long after a
    demotion. Instead UMS is asked (``GET /api/auth/me`` with the user's token) and the answer
    is cached in Django's default cache for ``settings.UMS_ADMIN_CACHE_TTL`` seconds (default
    30; 0 asks on every request), per UMS session, so a demotion, a deactivation or a revoked
    session takes effect within that time. The answer also updates the local user
    (``is_staff``/``is_superuser``). If UMS cannot be reached the error propagates: the view is
    not served on the strength of an old answer.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not _is_admin_now(request):
            raise DjangoPermissionDenied("UMS administrator rights are required")
        return view(request, *args, **kwargs)

    return ums_login_required(cast(View, wrapper))


def _is_admin_now(request: HttpRequest) -> bool:
    """Whether UMS currently sees the session's user as an active system admin."""
    tokens = SessionTokenStore(request.session).load()
    if tokens is None:
        return False
    ttl = float(getattr(settings, "UMS_ADMIN_CACHE_TTL", 30))
    claims = token_claims(tokens.access_token)  # only to name the cache entry
    key = f"ums_client:is_admin:{claims.get('sub')}:{claims.get('sid')}"
    if ttl > 0:
        cached = cache.get(key)
        if cached is not None:
            return bool(cached)
    try:
        remote = get_client(request).me()  # AuthenticationError: ums_login_required logs out
    except PermissionDenied as exc:
        raise DjangoPermissionDenied(str(exc)) from exc
    from .backends import sync_user  # needs the app registry, unlike this module

    sync_user(remote)
    is_admin = remote.is_admin and remote.is_active
    if ttl > 0:
        cache.set(key, is_admin, ttl)
    return is_admin


def require_lab_access(lab_kwarg: str = "lab_id", role: str = "viewer") -> Callable[[View], View]:
    """Require at least ``role`` in the lab named by the URL keyword ``lab_kwarg``.

    Asks ``GET /api/labs/{id}/access``; roles rank viewer < member < lab_admin, and system
    admins pass. Others get 403. The answer is left on ``request.lab_access``
    (:class:`ums_client.AccessInfo`). A lab that requires a second factor, for a member whose
    session has not proven theirs, sends them to ``settings.UMS_STEP_UP_URL`` when that is
    set (403 otherwise).
    """
    if role not in ROLE_RANK:
        raise ValueError(f"unknown lab role {role!r}; one of {', '.join(ROLE_RANK)}")

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                access = get_client(request).lab_access(int(kwargs[lab_kwarg]))
            except StepUpRequired as exc:
                step_up_url = getattr(settings, "UMS_STEP_UP_URL", None)
                if step_up_url:
                    return _to_login(request, step_up_url)
                raise DjangoPermissionDenied(str(exc)) from exc
            except (PermissionDenied, NotFound) as exc:
                raise DjangoPermissionDenied(str(exc)) from exc
            if ROLE_RANK.get(access.role, 0) < ROLE_RANK[role]:
                raise DjangoPermissionDenied(f"this needs the {role} role in the lab")
            request.lab_access = access  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return ums_login_required(cast(View, wrapper))

    return decorator


def session_amr(request: HttpRequest) -> tuple[str, ...]:
    """The authentication methods (RFC 8176 ``amr``) of the session's UMS access token.

    ``("pwd",)`` after a password alone; ``("pwd", "otp", "mfa")`` after a TOTP or recovery
    code; ``("pwd", "hwk", "mfa")`` after a passkey; ``("hwk", "mfa")`` for a passwordless
    passkey sign-in. Empty without UMS tokens. Read from the token without verifying it: it
    came from UMS itself and is kept server-side (refreshes carry the methods on).
    """
    tokens = SessionTokenStore(request.session).load()
    if tokens is None:
        return ()
    amr = token_claims(tokens.access_token).get("amr")
    return tuple(m for m in amr if isinstance(m, str)) if isinstance(amr, list) else ()


def require_amr(*methods: str) -> Callable[[View], View]:
    """Let through only UMS sessions whose token's ``amr`` has all of ``methods``.

    Like :func:`ums_login_required` first. A session lacking a method (one signed in with
    the password alone, for ``"mfa"``) is sent to ``settings.UMS_STEP_UP_URL`` with
    ``?next=`` when that is set (a view that calls ``get_client(request).step_up(...)``,
    which stores the stepped-up tokens in the session), and gets 403 otherwise.
    """
    required = frozenset(methods)
    if not required or not all(isinstance(m, str) and m for m in required):
        raise ValueError('name the required methods, e.g. require_amr("mfa")')

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not required <= set(session_amr(request)):
                step_up_url = getattr(settings, "UMS_STEP_UP_URL", None)
                if step_up_url:
                    return _to_login(request, step_up_url)
                missing = ", ".join(sorted(required - set(session_amr(request))))
                raise DjangoPermissionDenied(
                    f"this needs a session that proved {missing}: step up with a second factor"
                )
            return view(request, *args, **kwargs)

        return ums_login_required(cast(View, wrapper))

    return decorator


def ums_mfa_required(view: View) -> View:
    """:func:`require_amr` ``("mfa")``: the session must have proven a second factor, at
    sign-in or by a step-up."""
    return require_amr("mfa")(view)
