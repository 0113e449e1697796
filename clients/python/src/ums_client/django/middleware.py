"""Keeps the UMS tokens of logged-in users fresh in their Django sessions."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, load_backend
from django.contrib.auth import logout as auth_logout
from django.http import HttpRequest, HttpResponse

from ..errors import AuthenticationError, ServiceUnavailable
from ..models import TokenPair
from . import devices
from .backends import UMSBackend, sync_user
from .store import SESSION_KEY, SessionTokenStore, get_client, seconds_left

__all__ = ["UMSDeviceMiddleware", "UMSTokenMiddleware"]

log = logging.getLogger(__name__)

# Refresh tokens are single use: two requests of one browser must not both refresh.
_LOCKS = [threading.Lock() for _ in range(64)]


def _lock_for(session_key: str | None) -> threading.Lock:
    return _LOCKS[zlib.crc32((session_key or "").encode()) % len(_LOCKS)]


def _stored_tokens(request: HttpRequest) -> TokenPair | None:
    """The tokens as saved by the latest request of this session (maybe not this one)."""
    engine = import_module(settings.SESSION_ENGINE)
    data = engine.SessionStore(request.session.session_key).load().get(SESSION_KEY)
    return TokenPair(**data) if data else None


class UMSDeviceMiddleware:
    """Keeps a stable random id per browser in a long-lived cookie, which the UMS calls made
    for the browser send as ``X-UMS-Device-Id`` (see :mod:`ums_client.django.devices`).

    Place it anywhere before the views that sign in. The cookie (``settings.UMS_DEVICE_COOKIE``,
    default ``ums_device``; HttpOnly, SameSite=Lax, Secure when ``SESSION_COOKIE_SECURE``)
    lives ``settings.UMS_DEVICE_COOKIE_AGE`` seconds (400 days) from the latest sign-in. It is
    set only on responses to requests that called UMS, the first sign-in above all.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        devices.assign(request)
        response = self.get_response(request)
        devices.set_cookie_if_due(request, response)
        return response


class UMSTokenMiddleware:
    """Place after ``SessionMiddleware`` and ``AuthenticationMiddleware``.

    For a user logged in through UMS it refreshes the access token when less than
    ``settings.UMS_REFRESH_LEEWAY`` seconds (default 30) are left, then re-syncs the local
    user from ``/api/auth/me``. When UMS refuses the refresh (the session was revoked or has
    expired) or the tokens are missing, the user is logged out of Django. It also closes the
    request's UMS client (:func:`ums_client.django.get_client`) at the end.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            self._keep_fresh(request)
            return self.get_response(request)
        finally:
            client = getattr(request, "_ums_client", None)
            if client is not None:
                client.close()

    def _keep_fresh(self, request: HttpRequest) -> None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return
        tokens = SessionTokenStore(request.session).load()
        if tokens is None:
            backend_path = request.session.get(BACKEND_SESSION_KEY)
            if backend_path and isinstance(load_backend(backend_path), UMSBackend):
                auth_logout(request)
            return
        if seconds_left(tokens.access_token) > float(getattr(settings, "UMS_REFRESH_LEEWAY", 30)):
            return
        try:
            if self._refresh(request, tokens):
                remote = get_client(request).me()
                sync_user(remote)
                if not remote.is_active:
                    auth_logout(request)
        except AuthenticationError:
            log.info("UMS session of %s has ended; logging out", user)
            auth_logout(request)
        except ServiceUnavailable as exc:
            log.warning("could not refresh UMS tokens: %s", exc)

    def _refresh(self, request: HttpRequest, tokens: TokenPair) -> bool:
        """Refresh unless a concurrent request of this session already did; True if this one did."""
        with _lock_for(request.session.session_key):
            latest = _stored_tokens(request)
            if latest is not None and latest.refresh_token != tokens.refresh_token:
                SessionTokenStore(request.session).save(latest)
                return False
            get_client(request).refresh()
            request.session.save()  # let concurrent requests see the new tokens at once
            return True
