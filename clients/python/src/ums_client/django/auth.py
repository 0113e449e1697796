"""Logging out of UMS and Django together."""

from __future__ import annotations

import logging

from django.contrib.auth import logout as auth_logout
from django.http import HttpRequest

from ..errors import UMSError
from .store import SessionTokenStore, get_client

__all__ = ["logout"]

log = logging.getLogger(__name__)


def logout(request: HttpRequest) -> None:
    """Revoke the UMS session (``POST /api/auth/logout``) and log out of Django.

    The Django logout happens even if UMS cannot be reached (then a warning is logged and
    the UMS session ends only when its refresh token expires).
    """
    if SessionTokenStore(request.session).load() is not None:
        try:
            get_client(request).logout()
        except UMSError as exc:
            log.warning("UMS logout failed: %s", exc)
    auth_logout(request)
