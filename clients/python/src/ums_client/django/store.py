"""The per-request UMS client and the session-backed token store."""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from ..client import DEVICE_ID_HEADER, UMSClient
from ..models import TokenPair
from ..verifier import TokenVerifier
from .devices import browser_headers

__all__ = [
    "SESSION_KEY",
    "SessionTokenStore",
    "get_client",
    "get_verifier",
    "seconds_left",
    "token_claims",
]

#: Where the tokens live in ``request.session``.
SESSION_KEY = "_ums_tokens"


class SessionTokenStore:
    """A :class:`~ums_client.TokenStore` keeping the tokens in a Django session.

    Use a server-side session engine (database, cache): the refresh token is a credential.
    """

    def __init__(self, session: SessionBase) -> None:
        self.session = session

    def load(self) -> TokenPair | None:
        data = self.session.get(SESSION_KEY)
        if not data:
            return None
        return TokenPair(**data)

    def save(self, tokens: TokenPair) -> None:
        self.session[SESSION_KEY] = {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "token_type": tokens.token_type,
            "expires_in": tokens.expires_in,
        }

    def clear(self) -> None:
        self.session.pop(SESSION_KEY, None)


def make_client(
    token_store: Any = None, request: HttpRequest | None = None, signing_in: bool = False
) -> UMSClient:
    """A client for ``settings.UMS_BASE_URL`` with ``settings.UMS_TIMEOUT`` (default 10 s).

    With ``request``, the client acts for its browser: it sends the browser's device id and
    headers (:func:`ums_client.django.devices.browser_headers`; ``signing_in`` renews the
    device cookie).
    """
    base_url = getattr(settings, "UMS_BASE_URL", None)
    if not base_url:
        raise ImproperlyConfigured("set UMS_BASE_URL to the address of the UMS service")
    headers = browser_headers(request, signing_in) if request is not None else {}
    device = headers.pop(DEVICE_ID_HEADER, None)
    return UMSClient(
        base_url,
        float(getattr(settings, "UMS_TIMEOUT", 10.0)),
        token_store,
        headers=headers,
        device_id=device,
    )


def get_client(request: HttpRequest) -> UMSClient:
    """The UMS client of this request, acting with the tokens of its Django session, for its
    browser (its device id and headers, see :mod:`ums_client.django.devices`).

    Created once per request; :class:`~ums_client.django.middleware.UMSTokenMiddleware`
    closes it when the response is done.
    """
    client: UMSClient | None = getattr(request, "_ums_client", None)
    if client is None:
        client = make_client(SessionTokenStore(request.session), request)
        request._ums_client = client  # type: ignore[attr-defined]
    return client


_VERIFIERS: dict[tuple[str, str, str | None, float], TokenVerifier] = {}
_VERIFIERS_LOCK = threading.Lock()


def get_verifier() -> TokenVerifier:
    """A :class:`~ums_client.TokenVerifier` for access tokens presented to this site.

    For views that accept UMS access tokens from other clients (``Authorization: Bearer``).
    It fetches the keys from ``settings.UMS_BASE_URL`` and checks ``iss`` against
    ``settings.UMS_ISSUER`` (the server's ``UMS_PUBLIC_URL``; default ``UMS_BASE_URL``) and
    ``aud`` against ``settings.UMS_JWT_AUDIENCE`` (the server's setting of that name; unset
    means no audience, and then tokens carrying one are refused). One verifier is kept per
    configuration, so that its key cache outlives the request.
    """
    base_url = getattr(settings, "UMS_BASE_URL", None)
    if not base_url:
        raise ImproperlyConfigured("set UMS_BASE_URL to the address of the UMS service")
    issuer = getattr(settings, "UMS_ISSUER", None) or base_url
    audience = getattr(settings, "UMS_JWT_AUDIENCE", None) or None
    timeout = float(getattr(settings, "UMS_TIMEOUT", 10.0))
    config = (base_url, issuer, audience, timeout)
    with _VERIFIERS_LOCK:
        verifier = _VERIFIERS.get(config)
        if verifier is None:
            verifier = TokenVerifier(base_url, issuer=issuer, audience=audience, timeout=timeout)
            _VERIFIERS[config] = verifier
    return verifier


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a token this process received from UMS itself, read without verification.

    Only for tokens that came straight from UMS and were kept server-side (the session);
    tokens presented by others must go through :class:`ums_client.TokenVerifier`.
    """
    return jwt.decode(token, options={"verify_signature": False})


def seconds_left(token: str) -> float:
    """Seconds until a UMS-issued token expires (negative once it has)."""
    return float(token_claims(token).get("exp", 0)) - time.time()
