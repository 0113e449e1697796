"""Offline verification of UMS access tokens against the service's JWKS."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import httpx
import jwt

from .errors import InsufficientAuthentication, InvalidToken, ServiceUnavailable
from .transport import ResendingTransport

__all__ = ["TokenVerifier"]

log = logging.getLogger(__name__)

_REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "typ"]
# The algorithm a JWK is for when it does not say (UMS's keys always carry "alg").
_DEFAULT_ALG = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}


class _Key(NamedTuple):
    algorithm: str
    key: Any


class TokenVerifier:
    """Verifies UMS access tokens without calling UMS for each one.

    The public keys come from ``{base_url}/.well-known/jwks.json`` (or ``jwks_url``) and are
    cached for ``cache_ttl`` seconds. A token whose ``kid`` is not in the cache makes the
    verifier fetch the JWKS again (after a key rotation), at most once per
    ``min_refetch_interval`` seconds so that forged ``kid`` values cannot hammer UMS.

    A token passes when its ``alg`` is one of ``algorithms`` and matches its key, its
    signature verifies, ``iss`` equals ``issuer``, it has not expired and ``typ`` is
    ``access``. :meth:`verify` returns the claims (``sub`` is the user id as a string,
    ``sid`` the session, ``is_admin``); otherwise it raises :class:`~ums_client.InvalidToken`.

    ``audience`` is the server's ``UMS_JWT_AUDIENCE`` (one value or several accepted ones).
    When it is given, a token must carry an ``aud`` claim naming it: a token without ``aud``
    was issued for no particular service (or by a server configured differently) and is
    refused, as is one issued for another service sharing the same keys. Without
    ``audience``, tokens that do carry ``aud`` are refused (RFC 7519: a recipient that does not
    identify itself with the audience must reject the token), so set it on every verifier
    once the server sets ``UMS_JWT_AUDIENCE``.

    ``require_mfa=True`` refuses tokens of sessions that have not proven a second factor:
    the token's ``amr`` (RFC 8176 authentication methods: ``pwd``, ``otp``, ``hwk``,
    ``mfa``) must contain ``mfa``. ``required_amr`` names methods that must all be there
    (``{"hwk"}``: a passkey); :meth:`verify` takes more per call. A token lacking one raises
    :class:`~ums_client.InsufficientAuthentication` (a subclass of ``InvalidToken`` with
    ``code`` ``insufficient_user_authentication``): the user should step up
    (``POST /api/auth/step-up``) and present the new token.

    Note that offline verification cannot see a logout: a revoked session's access token stays
    valid here until it expires.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        issuer: str,
        audience: str | Iterable[str] | None = None,
        jwks_url: str | None = None,
        algorithms: Iterable[str] = ("RS256", "ES256", "EdDSA"),
        cache_ttl: float = 300.0,
        min_refetch_interval: float = 30.0,
        leeway: float = 0.0,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        require_mfa: bool = False,
        required_amr: Iterable[str] = (),
    ) -> None:
        if (base_url is None) == (jwks_url is None):
            raise ValueError("give exactly one of base_url and jwks_url")
        self.jwks_url = jwks_url or f"{base_url.rstrip('/')}/.well-known/jwks.json"  # type: ignore[union-attr]
        self.issuer = issuer
        if audience is not None and not isinstance(audience, str):
            audience = tuple(audience)
        if audience is not None and (not audience or not all(audience)):
            # "" would make PyJWT skip the check (it treats a falsy audience as absent).
            raise ValueError("audience must be a non-empty string (or strings), or None")
        self.audience: str | tuple[str, ...] | None = audience
        self.algorithms = tuple(algorithms)
        unsafe = [a for a in self.algorithms if a == "none" or a.upper().startswith("HS")]
        if not self.algorithms or unsafe:
            raise ValueError(f"algorithms must be asymmetric signature algorithms, not {unsafe}")
        if isinstance(required_amr, str):
            raise TypeError('required_amr is a collection of methods, e.g. {"mfa"}, not a string')
        self.required_amr = frozenset(required_amr) | ({"mfa"} if require_mfa else set())
        self.cache_ttl = cache_ttl
        self.min_refetch_interval = min_refetch_interval
        self.leeway = leeway
        self._http = httpx.Client(
            timeout=timeout, transport=ResendingTransport.around(transport, self.jwks_url)
        )
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._fetched_at = -math.inf
        self._last_unknown_kid_fetch = -math.inf

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TokenVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def verify(self, token: str, *, required_amr: Iterable[str] = ()) -> dict[str, Any]:
        """Return the claims of a valid access token; raise :class:`InvalidToken` otherwise.

        ``required_amr`` adds methods that the token's ``amr`` must contain for this call
        (beyond the verifier's own), e.g. ``{"mfa"}`` for one sensitive route; a token lacking
        one raises :class:`InsufficientAuthentication`.
        """
        if isinstance(required_amr, str):
            raise TypeError('required_amr is a collection of methods, e.g. {"mfa"}, not a string')
        required = self.required_amr | frozenset(required_amr)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise InvalidToken(f"algorithm {alg!r} is not allowed")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token names no key (kid)")
        key = self._key(kid)
        if key.algorithm != alg:
            raise InvalidToken(f"key {kid!r} is for {key.algorithm}, not {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": self._required_claims},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken(f"the token is not for this audience: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        if claims.get("typ") != "access":
            raise InvalidToken(f"not an access token (typ={claims.get('typ')!r})")
        if required:
            amr = claims.get("amr")
            methods = tuple(m for m in amr if isinstance(m, str)) if isinstance(amr, list) else ()
            if not required <= set(methods):
                raise InsufficientAuthentication(required, methods)
        return claims

    @property
    def _required_claims(self) -> list[str]:
        # PyJWT already refuses a missing "aud" when an audience is given; requiring it too
        # keeps that refusal explicit rather than a detail of the library.
        return [*_REQUIRED_CLAIMS, "aud"] if self.audience is not None else _REQUIRED_CLAIMS

    def _key(self, kid: str) -> _Key:
        with self._lock:
            now = time.monotonic()
            fetched = False
            if now - self._fetched_at >= self.cache_ttl:
                self._fetch(now)
                fetched = True
            key = self._keys.get(kid)
            if (
                key is None
                and not fetched
                and now - self._last_unknown_kid_fetch >= self.min_refetch_interval
            ):
                self._last_unknown_kid_fetch = now
                self._fetch(now)
                key = self._keys.get(kid)
        if key is None:
            raise InvalidToken(f"unknown signing key {kid!r}")
        return key

    def _fetch(self, now: float) -> None:
        """Reload the keys; on failure keep stale keys (retrying soon) if there are any."""
        try:
            response = self._http.get(self.jwks_url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            if not self._keys:
                raise ServiceUnavailable(
                    503,
                    "Service Unavailable",
                    f"the JWKS at {self.jwks_url} could not be fetched: {exc!r}",
                    code="jwks_unavailable",
                ) from exc
            log.warning("keeping cached signing keys: JWKS fetch failed: %r", exc)
            self._fetched_at = now - self.cache_ttl + self.min_refetch_interval
            return
        keys: dict[str, _Key] = {}
        for jwk in document.get("keys", []):
            algorithm = jwk.get("alg") or _DEFAULT_ALG.get(jwk.get("kty"))
            if jwk.get("use", "sig") != "sig" or not jwk.get("kid") or not algorithm:
                continue
            try:
                keys[jwk["kid"]] = _Key(algorithm, jwt.PyJWK(jwk, algorithm).key)
            except jwt.PyJWTError as exc:
                log.warning("ignoring unusable JWK %r: %s", jwk.get("kid"), exc)
        self._keys = keys
        self._fetched_at = now
