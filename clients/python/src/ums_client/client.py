"""Synchronous HTTP client for the UMS API."""

from __future__ import annotations

import json as jsonlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx
import jwt

from . import __version__
from .errors import AuthenticationError, ServiceUnavailable, error_from_response
from .models import (
    AccessInfo,
    AuditEvent,
    ConsentVersions,
    Device,
    FactorEnrolled,
    Invitation,
    Lab,
    LoginAttempt,
    LoginResult,
    Member,
    Membership,
    MFAStatus,
    Page,
    Passkey,
    PasskeyChallenge,
    PasskeyRegistration,
    SecurityEvent,
    SecuritySummary,
    Session,
    TokenPair,
    TOTPEnrollment,
    User,
)
from .tokens import MemoryTokenStore, TokenStore
from .transport import ResendingTransport

__all__ = ["DEVICE_ID_HEADER", "UMSClient"]

#: The header by which UMS recognises the device a sign-in comes from (see ``device_id``).
DEVICE_ID_HEADER = "X-UMS-Device-Id"

T = TypeVar("T")
Params = Mapping[str, Any]


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        iso = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        return iso.replace("+00:00", "Z")
    return str(value)


def _params(**values: Any) -> dict[str, str]:
    """Query parameters without the ``None`` ones; ``from_`` is sent as ``from``."""
    return {k.rstrip("_"): _query_value(v) for k, v in values.items() if v is not None}


def _body(**values: Any) -> dict[str, Any]:
    """A JSON body without the ``None`` members (``None`` means "leave unchanged")."""
    return {k: v for k, v in values.items() if v is not None}


class UMSClient:
    """One method per route of the UMS contract.

    Tokens from :meth:`login` and :meth:`refresh` are kept in ``token_store`` (memory by
    default) and sent as ``Authorization: Bearer``. When a call is answered 401 and a refresh
    token is held, the client refreshes once and retries the call. Refresh tokens rotate on
    every use and reusing a spent one revokes the session, so refreshing is single-flight:
    threads sharing a client wait on one lock, and a thread that finds the access token already
    replaced while it waited retries with the new one instead of refreshing again.

    UMS weighs every sign-in, a device it has not seen for the account among other things. A
    portal signing in on behalf of browsers should pass ``device_id``, a stable id of the end
    user's browser (say, a long-lived random cookie), sent as ``X-UMS-Device-Id`` on every
    request; without it UMS tells devices apart by ``User-Agent``, ``Accept-Language`` and the
    client hints, which a portal can forward in ``headers`` (they replace the client's own).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        token_store: TokenStore | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        device_id: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_store: TokenStore = (
            token_store if token_store is not None else MemoryTokenStore()
        )
        self.device_id = device_id
        self._timeout = timeout
        self._refresh_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=ResendingTransport.around(transport, self.base_url),
            headers={
                "Accept": "application/json",
                "User-Agent": f"ums-client-python/{__version__}",
                **(headers or {}),
                **({DEVICE_ID_HEADER: device_id} if device_id else {}),
            },
        )

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> UMSClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def tokens(self) -> TokenPair | None:
        """The tokens currently held, if logged in."""
        return self.token_store.load()

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Params | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            return self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                503,
                "Service Unavailable",
                f"UMS at {self.base_url} could not be reached: {exc!r}",
                code="unreachable",
            ) from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Params | None = None,
        auth: bool = True,
        refresh: bool = True,
    ) -> httpx.Response:
        """Send a call (with the stored access token unless ``auth`` is false).

        A 401 makes the client refresh and retry once, unless ``refresh`` is false: for calls
        whose 401 can be a refused answer (a wrong second factor) rather than a stale token,
        where a retry would count the same wrong answer twice.
        """
        tokens = self.token_store.load() if auth else None
        token = tokens.access_token if tokens else None
        response = self._send(method, path, json=json, params=params, token=token)
        if (
            response.status_code == 401
            and refresh
            and tokens is not None
            and tokens.refresh_token
            and self._refresh_after_401(tokens.access_token)
        ):
            fresh = self.token_store.load()
            response = self._send(
                method, path, json=json, params=params, token=fresh.access_token if fresh else None
            )
        if response.is_error:
            raise error_from_response(response)
        return response

    def _get(self, path: str, parse: Callable[[Any], T], params: Params | None = None) -> T:
        return parse(self._request("GET", path, params=params).json())

    def _refresh_after_401(self, stale_access_token: str) -> bool:
        """Refresh once for a call refused with ``stale_access_token``.

        Returns whether fresh tokens are there to retry with. A thread that waited on the lock
        while another refreshed finds a different access token and just retries.
        """
        with self._refresh_lock:
            current = self.token_store.load()
            if current is None or not current.refresh_token:
                return False
            if current.access_token != stale_access_token:
                return True
            try:
                self._refresh_locked(current.refresh_token)
            except AuthenticationError:
                return False  # the session is gone: the caller gets the original 401
            return True

    def _refresh_if_expiring(self, leeway: float = 5.0) -> None:
        """Refresh now if the stored access token expires within ``leeway`` seconds.

        For calls sent with ``refresh=False``, which cannot refresh after a 401. The token is
        read without verification: it came from UMS and only its ``exp`` is used.
        """
        tokens = self.token_store.load()
        if tokens is None or not tokens.refresh_token:
            return
        try:
            claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
            expires_at = float(claims["exp"])
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            return  # not for this client to judge: UMS will answer
        if expires_at - time.time() <= leeway:
            self._refresh_after_401(tokens.access_token)

    def _answer(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        """POST a second-factor answer with the bearer token: its 401 is a refused answer
        (counted toward the lockout), not to be retried, so the token is refreshed first if
        it is about to expire."""
        self._refresh_if_expiring()
        return self._request("POST", path, json=body, refresh=False)

    def _refresh_locked(self, refresh_token: str) -> TokenPair:
        try:
            response = self._request(
                "POST", "/api/auth/refresh", json={"refresh_token": refresh_token}, auth=False
            )
        except AuthenticationError:
            current = self.token_store.load()
            if current is not None and current.refresh_token == refresh_token:
                self.token_store.clear()  # spent or revoked: useless from now on
            raise
        tokens = TokenPair.from_json(response.json())
        self.token_store.save(tokens)
        return tokens

    # -- /api/auth ------------------------------------------------------------------------

    def register(
        self,
        username: str,
        email: str,
        password: str,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        accept_terms: str | None = None,
        accept_privacy: str | None = None,
    ) -> User:
        """``POST /api/auth/register``: create an account (201).

        When the server asks for consent (:meth:`consent_versions`), ``accept_terms`` and
        ``accept_privacy`` must be the versions in force that the person accepted: otherwise
        :class:`ValidationError` names the missing or stale fields in ``errors``.
        """
        body = _body(
            username=username,
            email=email,
            password=password,
            first_name=first_name,
            last_name=last_name,
            accept_terms=accept_terms,
            accept_privacy=accept_privacy,
        )
        return User.from_json(
            self._request("POST", "/api/auth/register", json=body, auth=False).json()
        )

    def login(
        self,
        username: str,
        password: str,
        totp_code: str | None = None,
        *,
        accept_terms: str | None = None,
        accept_privacy: str | None = None,
    ) -> LoginResult:
        """``POST /api/auth/login`` with a username or email; the tokens are stored.

        For an account with a second factor, a right password raises :class:`MFARequired`
        (unless ``totp_code`` is given and right: the one-step form); finish with
        :meth:`login_mfa` and its ``mfa_token``. An account that must enrol a factor first
        (an admin, under the server's policy) raises :class:`MFAEnrollmentRequired`. A risky
        sign-in of an account without a factor raises :class:`VerificationRequired`: a code
        was emailed to the user, answered with ``login_mfa(mfa_token, "email_code", code)``.
        One that scores too high is refused as a wrong password is (:class:`AuthenticationError`:
        the answer tells nothing of the password; UMS tells the user); one from a denylisted
        address raises :class:`PermissionDenied`; an account reported as taken over
        (:meth:`report_not_me`) :class:`PasswordResetRequired` until its password is reset.

        An account that has not accepted the terms or privacy notice in force (the server's
        versions changed since) raises :class:`ConsentRequired`: finish with
        :meth:`login_consent`. Or accept them in the same step with ``accept_terms`` and
        ``accept_privacy`` (the versions in force, :meth:`consent_versions`; a stale one
        raises :class:`ValidationError`).
        """
        body = _body(
            username=username,
            password=password,
            totp_code=totp_code,
            accept_terms=accept_terms,
            accept_privacy=accept_privacy,
        )
        result = LoginResult.from_json(
            self._request("POST", "/api/auth/login", json=body, auth=False).json()
        )
        self.token_store.save(result.tokens)
        return result

    def consent_versions(self) -> ConsentVersions:
        """``GET /api/consents``: the versions of the terms of service and privacy notice in
        force (``None`` for a document the server does not ask for); no sign-in needed."""
        return ConsentVersions.from_json(self._request("GET", "/api/consents", auth=False).json())

    def login_consent(
        self,
        mfa_token: str,
        accept_terms: str | None = None,
        accept_privacy: str | None = None,
    ) -> LoginResult:
        """``POST /api/auth/login/consent``: after :class:`ConsentRequired`, accept the versions
        in force (those of :meth:`consent_versions`, as the user accepted them) and go on with
        the sign-in; the tokens are stored.

        The sign-in may still owe a step: an account with a second factor raises
        :class:`MFARequired` (a risky one :class:`VerificationRequired`) with a new
        ``mfa_token`` for :meth:`login_mfa`. A missing or stale version raises
        :class:`ValidationError` (the token stays usable); an unknown, used or expired token
        :class:`AuthenticationError` (sign in again).
        """
        body = _body(mfa_token=mfa_token, accept_terms=accept_terms, accept_privacy=accept_privacy)
        result = LoginResult.from_json(
            self._request("POST", "/api/auth/login/consent", json=body, auth=False).json()
        )
        self.token_store.save(result.tokens)
        return result

    def login_mfa(
        self,
        mfa_token: str,
        method: str,
        code: str | None = None,
        assertion: Mapping[str, Any] | None = None,
    ) -> LoginResult:
        """``POST /api/auth/login/mfa``: the second step of a sign-in; the tokens are stored.

        ``method`` is ``totp`` or ``recovery_code`` (with ``code``), ``email_code`` (with the
        six digits of the "Your sign-in code" email, after :class:`VerificationRequired`), or
        ``webauthn`` (with ``assertion``, the ``PublicKeyCredential`` of
        ``navigator.credentials.get`` as JSON; without it, :class:`MFARequired` is raised again
        with fresh ``webauthn`` options for the same token). A wrong answer raises
        :class:`AuthenticationError`; the token dies after three of them or one success, and
        wrong answers count toward the account's lockout (:class:`AccountLocked`). After an
        enrolment sign-in the result carries the account's ``recovery_codes``.
        """
        body = _body(mfa_token=mfa_token, method=method, code=code, assertion=assertion)
        result = LoginResult.from_json(
            self._request("POST", "/api/auth/login/mfa", json=body, auth=False).json()
        )
        self.token_store.save(result.tokens)
        return result

    def login_passkey_start(self) -> PasskeyChallenge:
        """``POST /api/auth/login/passkey``: start a passwordless sign-in with a passkey.

        Answer the challenge with ``login_mfa(challenge.mfa_token, "webauthn", assertion=...)``.
        """
        return PasskeyChallenge.from_json(
            self._request("POST", "/api/auth/login/passkey", auth=False).json()
        )

    def step_up(
        self,
        method: str,
        code: str | None = None,
        assertion: Mapping[str, Any] | None = None,
        mfa_token: str | None = None,
    ) -> TokenPair:
        """``POST /api/auth/step-up``: prove a second factor again in this session.

        Returns (and stores) a new pair for the same session whose ``amr`` gains the method
        (``otp`` for a TOTP or recovery code, ``hwk`` for a passkey) and ``mfa``, with
        ``auth_time`` now. For ``webauthn`` call first without ``assertion``: that raises
        :class:`MFARequired` with an ``mfa_token`` and ``webauthn`` request options; then call
        again with both. A wrong answer raises :class:`AuthenticationError` and is not retried
        (it counts toward the account's lockout): an access token about to expire is refreshed
        before the call instead of after a 401.
        """
        body = _body(method=method, code=code, assertion=assertion, mfa_token=mfa_token)
        response = self._answer("/api/auth/step-up", body)
        tokens = TokenPair.from_json(response.json())
        self.token_store.save(tokens)
        return tokens

    def refresh(self, refresh_token: str | None = None) -> TokenPair:
        """``POST /api/auth/refresh``: trade the (given or stored) refresh token for a new pair.

        The old refresh token is spent; the new pair is stored.
        """
        with self._refresh_lock:
            if refresh_token is None:
                current = self.token_store.load()
                if current is None or not current.refresh_token:
                    raise AuthenticationError(
                        401, "Unauthorized", "No refresh token is held.", code="not_logged_in"
                    )
                refresh_token = current.refresh_token
            return self._refresh_locked(refresh_token)

    def logout(self) -> None:
        """``POST /api/auth/logout``: revoke this session in UMS and forget the tokens."""
        tokens = self.token_store.load()
        body = _body(refresh_token=tokens.refresh_token if tokens else None)
        try:
            self._request("POST", "/api/auth/logout", json=body)
        finally:
            self.token_store.clear()

    def me(self) -> User:
        """``GET /api/auth/me``: the caller, with ``labs``."""
        return self._get("/api/auth/me", User.from_json)

    def forgot_password(self, email: str) -> None:
        """``POST /api/auth/forgot-password`` (202 whether or not the email exists)."""
        self._request("POST", "/api/auth/forgot-password", json={"email": email}, auth=False)

    def reset_password(self, token: str, new_password: str) -> None:
        """``POST /api/auth/reset-password`` with the token from the reset email."""
        body = {"token": token, "new_password": new_password}
        self._request("POST", "/api/auth/reset-password", json=body, auth=False)

    def change_password(self, current_password: str, new_password: str) -> None:
        """``POST /api/auth/change-password``; the caller's other sessions are revoked."""
        body = {"current_password": current_password, "new_password": new_password}
        self._request("POST", "/api/auth/change-password", json=body)

    def change_email(self, new_email: str, password: str) -> None:
        """``POST /api/auth/change-email`` (202); the switch happens on :meth:`verify_email`."""
        body = {"new_email": new_email, "password": password}
        self._request("POST", "/api/auth/change-email", json=body)

    def verify_email(self, token: str) -> None:
        """``POST /api/auth/verify-email`` with the token from the verification email."""
        self._request("POST", "/api/auth/verify-email", json={"token": token}, auth=False)

    def list_sessions(self) -> list[Session]:
        """``GET /api/auth/sessions``: the caller's active sessions."""
        return self._get("/api/auth/sessions", lambda d: [Session.from_json(s) for s in d])

    def revoke_session(self, session_id: str) -> None:
        """``DELETE /api/auth/sessions/{id}``."""
        self._request("DELETE", f"/api/auth/sessions/{session_id}")

    # -- /api/auth/mfa: the caller's second factors ----------------------------------------

    def mfa_status(self) -> MFAStatus:
        """``GET /api/auth/mfa``: the caller's factors, recovery codes left and passkeys."""
        return self._get("/api/auth/mfa", MFAStatus.from_json)

    def enroll_totp(self, mfa_token: str | None = None) -> TOTPEnrollment:
        """``POST /api/auth/mfa/totp/enroll``: start enrolling an authenticator app.

        As the signed-in caller, or with the ``mfa_token`` of a sign-in that raised
        :class:`MFAEnrollmentRequired` (then no bearer token is sent, and the new factor is
        confirmed by :meth:`login_mfa` with method ``totp``). :class:`Conflict` if a confirmed
        app is enrolled already. Changes to an account's factors need a recent sign-in (ten
        minutes), one that proved a factor if the account has one: otherwise
        :class:`StepUpRequired` (:meth:`step_up`) or :class:`ReauthenticationRequired`.
        """
        body = _body(mfa_token=mfa_token)
        response = self._request(
            "POST", "/api/auth/mfa/totp/enroll", json=body, auth=mfa_token is None
        )
        return TOTPEnrollment.from_json(response.json())

    def confirm_totp(self, code: str) -> FactorEnrolled:
        """``POST /api/auth/mfa/totp/confirm`` with a code of the app; from then on it counts.

        The result has the account's ``recovery_codes`` when this is its first factor. A
        wrong code raises :class:`ValidationError` (``errors["code"]``).
        """
        response = self._request("POST", "/api/auth/mfa/totp/confirm", json={"code": code})
        return FactorEnrolled.from_json(response.json())

    def disable_totp(self, password: str, code: str) -> None:
        """``POST /api/auth/mfa/totp/disable`` with the password and a TOTP or recovery code.

        Needs a recent session that proved a factor (:class:`StepUpRequired`). A wrong
        password raises :class:`ValidationError` (``errors["password"]``); a wrong code
        :class:`AuthenticationError`, counted toward the lockout like any second factor (and,
        as with :meth:`step_up`, not retried); :class:`Conflict` if an admin would lose the
        last factor the server's policy asks for.
        """
        self._answer("/api/auth/mfa/totp/disable", {"password": password, "code": code})

    def regenerate_recovery_codes(self, password: str) -> list[str]:
        """``POST /api/auth/mfa/recovery-codes``: ten new recovery codes; the old ones are void.

        Needs a recent session that proved a factor (:class:`StepUpRequired`); a wrong
        password raises :class:`ValidationError` (``errors["password"]``).
        """
        response = self._request(
            "POST", "/api/auth/mfa/recovery-codes", json={"password": password}
        )
        return list(response.json()["recovery_codes"])

    def start_passkey_registration(self, mfa_token: str | None = None) -> PasskeyRegistration:
        """``POST /api/auth/mfa/passkeys/register/start``: creation options for a new passkey.

        As the signed-in caller (in a recent sign-in, as for :meth:`enroll_totp`), or with the
        ``mfa_token`` of an enrolment sign-in.
        """
        body = _body(mfa_token=mfa_token)
        response = self._request(
            "POST", "/api/auth/mfa/passkeys/register/start", json=body, auth=mfa_token is None
        )
        return PasskeyRegistration.from_json(response.json())

    def finish_passkey_registration(
        self, registration_token: str, credential: Mapping[str, Any], name: str | None = None
    ) -> FactorEnrolled:
        """``POST /api/auth/mfa/passkeys/register/finish`` (201) with the ``PublicKeyCredential``
        of ``navigator.credentials.create`` as JSON; ``name`` defaults to "Passkey" on the server.

        The result has the new ``passkey``, and ``recovery_codes`` when it is the account's
        first factor. The registration token says whose it is: no bearer token is sent.
        """
        body = _body(registration_token=registration_token, name=name, credential=credential)
        response = self._request(
            "POST", "/api/auth/mfa/passkeys/register/finish", json=body, auth=False
        )
        return FactorEnrolled.from_json(response.json())

    def list_passkeys(self) -> list[Passkey]:
        """``GET /api/auth/mfa/passkeys``: the caller's passkeys."""
        return self._get("/api/auth/mfa/passkeys", lambda d: [Passkey.from_json(p) for p in d])

    def rename_passkey(self, passkey_id: int, name: str) -> None:
        """``PATCH /api/auth/mfa/passkeys/{id}`` (1 to 64 characters)."""
        self._request("PATCH", f"/api/auth/mfa/passkeys/{passkey_id}", json={"name": name})

    def delete_passkey(self, passkey_id: int) -> None:
        """``DELETE /api/auth/mfa/passkeys/{id}``.

        Needs a recent session that proved a second factor: otherwise
        :class:`StepUpRequired` (call :meth:`step_up` first).
        """
        self._request("DELETE", f"/api/auth/mfa/passkeys/{passkey_id}")

    # -- devices and "this wasn't me" ------------------------------------------------------

    def list_devices(self) -> list[Device]:
        """``GET /api/auth/devices``: the devices the caller signed in from, latest first.

        ``current`` marks the device of this call (as told by ``device_id``, or the headers).
        """
        return self._get("/api/auth/devices", lambda d: [Device.from_json(x) for x in d])

    def forget_device(self, device_id: int) -> None:
        """``DELETE /api/auth/devices/{id}``: its next sign-in counts as from a new device.

        :class:`NotFound` unless it is one of the caller's.
        """
        self._request("DELETE", f"/api/auth/devices/{device_id}")

    def report_not_me(self, token: str) -> int:
        """``POST /api/auth/not-me`` with the token of the "This wasn't me" link of a sign-in
        email (``{UMS_PUBLIC_URL}/not-me?token=...``); no bearer token is sent.

        Every session of the account ends, and it must reset its password before signing in
        again (until then :meth:`login` raises :class:`PasswordResetRequired`). Returns how
        many sessions were ended.
        """
        response = self._request("POST", "/api/auth/not-me", json={"token": token}, auth=False)
        return int(response.json().get("sessions_ended", 0))

    def jwks(self) -> dict[str, Any]:
        """``GET /.well-known/jwks.json``: the public signing keys."""
        return dict(self._request("GET", "/.well-known/jwks.json", auth=False).json())

    # -- /api/users -----------------------------------------------------------------------

    def list_users(
        self,
        *,
        q: str | None = None,
        is_active: bool | None = None,
        is_admin: bool | None = None,
        locked: bool | None = None,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page[User]:
        """``GET /api/users`` (admin); ``q`` matches a username or email substring; ``locked``
        keeps the accounts locked (or not locked) now."""
        params = _params(
            q=q, is_active=is_active, is_admin=is_admin, locked=locked, page=page, per_page=per_page
        )
        return self._get("/api/users", lambda d: Page.from_json(d, User.from_json), params)

    def get_user(self, user_id: int) -> User:
        """``GET /api/users/{id}`` (self or admin)."""
        return self._get(f"/api/users/{user_id}", User.from_json)

    def update_user(
        self,
        user_id: int,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        username: str | None = None,
        email: str | None = None,
        is_active: bool | None = None,
        is_admin: bool | None = None,
    ) -> User:
        """``PATCH /api/users/{id}``: change the given fields (the last four are admin-only)."""
        body = _body(
            first_name=first_name,
            last_name=last_name,
            username=username,
            email=email,
            is_active=is_active,
            is_admin=is_admin,
        )
        return User.from_json(self._request("PATCH", f"/api/users/{user_id}", json=body).json())

    def replace_user(
        self,
        user_id: int,
        *,
        first_name: str,
        last_name: str,
        username: str | None = None,
        email: str | None = None,
        is_active: bool | None = None,
        is_admin: bool | None = None,
    ) -> User:
        """``PUT /api/users/{id}``: set the names (and, as admin, the other given fields)."""
        body = _body(
            first_name=first_name,
            last_name=last_name,
            username=username,
            email=email,
            is_active=is_active,
            is_admin=is_admin,
        )
        return User.from_json(self._request("PUT", f"/api/users/{user_id}", json=body).json())

    def delete_user(self, user_id: int) -> None:
        """``DELETE /api/users/{id}`` (admin)."""
        self._request("DELETE", f"/api/users/{user_id}")

    def get_user_labs(self, user_id: int) -> list[Membership]:
        """``GET /api/users/{id}/labs``: the user's memberships."""
        return self._get(
            f"/api/users/{user_id}/labs", lambda d: [Membership.from_json(m) for m in d]
        )

    def unlock_user(self, user_id: int) -> User:
        """``POST /api/users/{id}/unlock`` (admin): lift a lockout and reset its counter."""
        return User.from_json(self._request("POST", f"/api/users/{user_id}/unlock").json())

    def reset_user_mfa(self, user_id: int) -> None:
        """``DELETE /api/users/{id}/mfa`` (admin): remove every second factor of the user.

        For a user who lost them: their sessions are revoked, and they sign in with the
        password alone afterwards.
        """
        self._request("DELETE", f"/api/users/{user_id}/mfa")

    @overload
    def export_user_data(
        self, user_id: int, format: Literal["json"] = "json"
    ) -> dict[str, Any]: ...

    @overload
    def export_user_data(self, user_id: int, format: Literal["zip"]) -> bytes: ...

    @overload
    def export_user_data(self, user_id: int, format: str) -> dict[str, Any] | bytes: ...

    def export_user_data(
        self,
        user_id: int,
        format: str = "json",  # the query parameter is called "format"
    ) -> dict[str, Any] | bytes:
        """``GET /api/users/{id}/export?format=json|zip`` (self or admin): everything UMS holds
        about the user (GDPR Art. 15 and 20); the export is audited.

        For ``json``, the parsed document: ``format`` (``ums-personal-data/1``),
        ``exported_at``, ``user_id``, then a list of records per section: ``profile``,
        ``memberships``, ``sessions``, ``devices``, ``login_attempts``, ``second_factors``
        (never their secrets), ``invitations`` and ``audit_events``. For ``zip``, the raw
        bytes of a zip archive: one CSV file per section (``profile.csv``...), with
        ``audit_events.csv`` and a ``README.txt``.
        """
        params = _params(format=format)
        response = self._request("GET", f"/api/users/{user_id}/export", params=params)
        if format == "zip":
            return response.content
        return dict(response.json())

    def erase_my_account(self, password: str) -> dict[str, Any]:
        """``DELETE /api/users/me``: erases the signed-in person's account and everything UMS
        holds about them (GDPR Art. 17). Their personal fields in the audit trail read as
        erased from then on; the trail still verifies.

        Takes the password again; an account with a second factor also needs a session that
        proved it in the last ten minutes (``step_up`` first, else ``StepUpRequired``).
        Returns ``{"status": "erased", "erase_after": None}``, or, when the server has a
        grace period (``UMS_ERASURE_GRACE``), ``{"status": "scheduled", "erase_after": ...}``:
        the account is disabled now and erased then, unless an admin cancels. The client's
        tokens are forgotten either way.
        """
        response = self._request("DELETE", "/api/users/me", json={"password": password})
        self.token_store.clear()
        return dict(response.json())

    def cancel_erasure(self, user_id: int) -> None:
        """``DELETE /api/users/{id}/erasure`` (admin): cancels an erasure still in its grace
        period. The account stays disabled until an admin activates it."""
        self._request("DELETE", f"/api/users/{user_id}/erasure")

    # -- /api/labs ------------------------------------------------------------------------

    def list_labs(self, *, page: int | None = None, per_page: int | None = None) -> Page[Lab]:
        """``GET /api/labs``: every lab for an admin, the caller's own for others."""
        params = _params(page=page, per_page=per_page)
        return self._get("/api/labs", lambda d: Page.from_json(d, Lab.from_json), params)

    def create_lab(self, code: str, name: str, description: str | None = None) -> Lab:
        """``POST /api/labs`` (admin)."""
        body = _body(code=code, name=name, description=description)
        return Lab.from_json(self._request("POST", "/api/labs", json=body).json())

    def get_lab(self, lab_id: int) -> Lab:
        """``GET /api/labs/{id}`` (admin or member)."""
        return self._get(f"/api/labs/{lab_id}", Lab.from_json)

    def update_lab(
        self,
        lab_id: int,
        *,
        code: str | None = None,
        name: str | None = None,
        description: str | None = None,
        require_mfa: bool | None = None,
    ) -> Lab:
        """``PATCH /api/labs/{id}`` (admin): change the given fields.

        ``require_mfa`` (system admins): members are then refused the lab's routes unless
        their session proved a second factor: :class:`MFASetupRequired` for a member without
        one, :class:`StepUpRequired` for one whose session has not (:meth:`step_up`).
        """
        body = _body(code=code, name=name, description=description, require_mfa=require_mfa)
        return Lab.from_json(self._request("PATCH", f"/api/labs/{lab_id}", json=body).json())

    def replace_lab(
        self, lab_id: int, *, code: str, name: str, description: str | None = None
    ) -> Lab:
        """``PUT /api/labs/{id}`` (admin)."""
        body = _body(code=code, name=name, description=description)
        return Lab.from_json(self._request("PUT", f"/api/labs/{lab_id}", json=body).json())

    def delete_lab(self, lab_id: int) -> None:
        """``DELETE /api/labs/{id}`` (admin); its memberships go with it."""
        self._request("DELETE", f"/api/labs/{lab_id}")

    def activate_lab(self, lab_id: int) -> Lab:
        """``POST /api/labs/{id}/activate`` (admin)."""
        return Lab.from_json(self._request("POST", f"/api/labs/{lab_id}/activate").json())

    def deactivate_lab(self, lab_id: int) -> Lab:
        """``POST /api/labs/{id}/deactivate`` (admin); its members then get 403 on it."""
        return Lab.from_json(self._request("POST", f"/api/labs/{lab_id}/deactivate").json())

    def list_members(self, lab_id: int) -> list[Member]:
        """``GET /api/labs/{id}/members`` (admin or any member).

        Members' ``user.email`` is shown to lab_admins and system admins only: for a member or
        viewer of the lab it is ``None``.
        """
        return self._get(f"/api/labs/{lab_id}/members", lambda d: [Member.from_json(m) for m in d])

    def add_member(self, lab_id: int, user_id: int, role: str = "member") -> Member:
        """``POST /api/labs/{id}/members`` (admin); role: viewer, member, lab_admin.

        Adding by user id is for system admins: a lab_admin gets :class:`PermissionDenied` and
        invites by email address instead (:meth:`invite`).
        """
        body = {"user_id": user_id, "role": role}
        return Member.from_json(
            self._request("POST", f"/api/labs/{lab_id}/members", json=body).json()
        )

    def remove_member(self, lab_id: int, user_id: int) -> None:
        """``DELETE /api/labs/{id}/members/{user_id}`` (admin or lab_admin)."""
        self._request("DELETE", f"/api/labs/{lab_id}/members/{user_id}")

    def set_member_role(self, lab_id: int, user_id: int, role: str) -> Member:
        """``PATCH /api/labs/{id}/members/{user_id}/role`` (admin or lab_admin)."""
        path = f"/api/labs/{lab_id}/members/{user_id}/role"
        return Member.from_json(self._request("PATCH", path, json={"role": role}).json())

    def lab_access(self, lab_id: int) -> AccessInfo:
        """``GET /api/labs/{id}/access``: the caller's role and permissions (403 for outsiders)."""
        return self._get(f"/api/labs/{lab_id}/access", AccessInfo.from_json)

    # -- lab invitations ------------------------------------------------------------------

    def invite(self, lab_id: int, email: str, role: str = "member") -> Invitation:
        """``POST /api/labs/{id}/invitations`` (admin or lab_admin): invite an address (202).

        role: viewer, member, lab_admin. The answer is the same whether or not an account has
        the address; UMS emails it a link to accept (after registering, for an address without
        an account) or decline. A new invitation of the same address to the lab replaces a
        pending one; an invitation can be answered for seven days.
        """
        body = {"email": email, "role": role}
        return Invitation.from_json(
            self._request("POST", f"/api/labs/{lab_id}/invitations", json=body).json()
        )

    def list_invitations(self, lab_id: int) -> list[Invitation]:
        """``GET /api/labs/{id}/invitations`` (admin or lab_admin): the lab's invitations, newest
        first, each with its ``status`` as of now."""
        return self._get(
            f"/api/labs/{lab_id}/invitations", lambda d: [Invitation.from_json(i) for i in d]
        )

    def revoke_invitation(self, lab_id: int, invitation_id: int) -> None:
        """``DELETE /api/labs/{id}/invitations/{invitation_id}`` (admin or lab_admin): its link
        stops working. :class:`Conflict` if it was answered or revoked already,
        :class:`NotFound` if it is not one of the lab's."""
        self._request("DELETE", f"/api/labs/{lab_id}/invitations/{invitation_id}")

    def accept_invitation(self, token: str) -> Member:
        """``POST /api/invitations/accept`` with the ``token`` of the invitation email's link:
        the caller joins the lab with the invited role.

        Needs a sign-in whose account has the invited address, verified
        (:class:`PermissionDenied` otherwise: the invitation stays open). An unknown, used,
        revoked or expired token raises :class:`ValidationError`.
        """
        body = {"token": token}
        return Member.from_json(self._request("POST", "/api/invitations/accept", json=body).json())

    def decline_invitation(self, token: str) -> None:
        """``POST /api/invitations/decline`` with the ``token`` of the invitation email's
        "decline" link; no bearer token is sent (the link alone is enough). An unknown, used,
        revoked or expired token raises :class:`ValidationError`."""
        self._request("POST", "/api/invitations/decline", json={"token": token}, auth=False)

    # -- audit and security (admin) -------------------------------------------------------

    def list_audit_logs(
        self,
        *,
        user_id: int | None = None,
        ip: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | int | None = None,
        success: bool | None = None,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page[AuditEvent]:
        """``GET /api/audit-logs``: a page of audit events matching the filters."""
        params = _params(
            user_id=user_id,
            ip=ip,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            success=success,
            from_=from_,
            to=to,
            page=page,
            per_page=per_page,
        )
        return self._get(
            "/api/audit-logs", lambda d: Page.from_json(d, AuditEvent.from_json), params
        )

    def export_audit_logs(
        self,
        format: str = "json",  # the query parameter is called "format"
        *,
        user_id: int | None = None,
        ip: str | None = None,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: str | int | None = None,
        success: bool | None = None,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
    ) -> bytes:
        """``GET /api/audit-logs?format=json|csv|pdf``: the whole filtered set, raw."""
        params = _params(
            format=format,
            user_id=user_id,
            ip=ip,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            success=success,
            from_=from_,
            to=to,
        )
        return self._request("GET", "/api/audit-logs", params=params).content

    def list_login_attempts(
        self,
        *,
        username: str | None = None,
        ip: str | None = None,
        success: bool | None = None,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page[LoginAttempt]:
        """``GET /api/security/login-attempts``: a page of login attempts."""
        params = _params(
            username=username,
            ip=ip,
            success=success,
            from_=from_,
            to=to,
            page=page,
            per_page=per_page,
        )
        path = "/api/security/login-attempts"
        return self._get(path, lambda d: Page.from_json(d, LoginAttempt.from_json), params)

    def security_events(
        self,
        *,
        action: str | None = None,
        user_id: int | None = None,
        ip: str | None = None,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        page: int | None = None,
        per_page: int | None = None,
    ) -> Page[SecurityEvent]:
        """``GET /api/security/events`` (admin): a page of security events, newest first.

        ``action`` is one of those listed on :class:`SecurityEvent`; ``from_`` and ``to``
        bound ``occurred_at`` (datetimes, or RFC 3339 strings).
        """
        params = _params(
            action=action,
            user_id=user_id,
            ip=ip,
            from_=from_,
            to=to,
            page=page,
            per_page=per_page,
        )
        path = "/api/security/events"
        return self._get(path, lambda d: Page.from_json(d, SecurityEvent.from_json), params)

    def security_summary(self, window: str | None = None) -> SecuritySummary:
        """``GET /api/security/summary`` (admin): counts, top addresses, countries and targeted
        accounts over the last ``window`` (a duration such as ``1h``, ``24h``, ``7d``; the
        server's default is ``24h``)."""
        params = _params(window=window)
        return self._get("/api/security/summary", SecuritySummary.from_json, params)

    def security_stream(
        self, *, timeout: float | None = None, limit: int | None = None
    ) -> Iterator[SecurityEvent]:
        """``GET /api/security/stream`` (admin): security events as they happen (Server-Sent
        Events, ``event: security``), as :class:`SecurityEvent`.

        A generator: the connection opens at the first ``next()`` (which raises any error
        answer, :class:`PermissionDenied` for a non-admin) and closes when the iteration ends:
        after ``limit`` events, once ``timeout`` seconds have passed (checked whenever the
        server sends anything, keep-alives included, and as the read timeout), when the server
        ends the stream, or when the generator is closed (``break`` out of a ``for`` loop, or
        ``contextlib.closing``). Without ``timeout`` it waits for events indefinitely.
        """
        if limit is not None and limit <= 0:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        response = self._open_event_stream("/api/security/stream", timeout)
        delivered = 0
        try:
            for kind, data in _server_sent_events(response, deadline):
                if kind != "security" or not data:
                    continue
                yield SecurityEvent.from_json(jsonlib.loads(data))
                delivered += 1
                if limit is not None and delivered >= limit:
                    return
        finally:
            response.close()

    def _open_event_stream(self, path: str, timeout: float | None) -> httpx.Response:
        """Open a streamed ``text/event-stream`` GET (refreshing and retrying once on a 401,
        as :meth:`_request` does); raises the error of an error answer."""
        # No read timeout without a deadline: events may be minutes apart.
        timeouts = httpx.Timeout(self._timeout, read=timeout)
        retried = False
        while True:
            tokens = self.token_store.load()
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if tokens is not None:
                headers["Authorization"] = f"Bearer {tokens.access_token}"
            request = self._http.build_request("GET", path, headers=headers, timeout=timeouts)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise ServiceUnavailable(
                    503,
                    "Service Unavailable",
                    f"UMS at {self.base_url} could not be reached: {exc!r}",
                    code="unreachable",
                ) from exc
            if (
                response.status_code == 401
                and not retried
                and tokens is not None
                and tokens.refresh_token
                and self._refresh_after_401(tokens.access_token)
            ):
                response.close()
                retried = True
                continue
            if response.is_error:
                try:
                    response.read()
                finally:
                    response.close()
                raise error_from_response(response)
            return response

    # -- operations -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: 200 while the process runs."""
        return dict(self._request("GET", "/health", auth=False).json())

    def ready(self) -> dict[str, Any]:
        """``GET /ready``: raises :class:`ServiceUnavailable` when the database does not answer."""
        return dict(self._request("GET", "/ready", auth=False).json())


def _server_sent_events(
    response: httpx.Response, deadline: float | None
) -> Iterator[tuple[str, str]]:
    """The ``(event type, data)`` of each event of a ``text/event-stream`` response, until it
    ends or ``deadline`` (``time.monotonic()``) passes; comments and ``id:`` lines are read
    and dropped (the events carry their id in the data)."""
    kind = ""
    data: list[str] = []
    try:
        for line in response.iter_lines():
            if deadline is not None and time.monotonic() >= deadline:
                return
            if not line:
                if data:
                    yield kind or "message", "\n".join(data)
                kind, data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment: the server's keep-alive
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
    except httpx.TransportError as exc:
        # The read timeout is the time left at the start: a timeout means the deadline passed.
        if deadline is not None and (
            isinstance(exc, httpx.ReadTimeout) or time.monotonic() >= deadline
        ):
            return
        raise ServiceUnavailable(
            503, "Service Unavailable", f"the event stream broke off: {exc!r}", code="unreachable"
        ) from exc
