"""Exceptions carrying the fields of UMS's ``application/problem+json`` errors (RFC 9457)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "AccountLocked",
    "AuthenticationError",
    "Conflict",
    "ConsentRequired",
    "InsufficientAuthentication",
    "InvalidToken",
    "MFAEnrollmentRequired",
    "MFARequired",
    "MFASetupRequired",
    "NotFound",
    "PasswordResetRequired",
    "PermissionDenied",
    "RateLimited",
    "ReauthenticationRequired",
    "SecondStepRequired",
    "ServiceUnavailable",
    "StepUpRequired",
    "UMSError",
    "ValidationError",
    "VerificationRequired",
    "error_from_response",
    "parse_retry_after",
]


class UMSError(Exception):
    """Any error answered by UMS (or met on the way to it).

    The attributes mirror the problem document: ``status``, ``title``, ``detail``, ``code``
    (a stable machine-readable name such as ``validation_failed``), ``type`` and ``errors``
    (field name to messages, on validation failures and conflicts).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        code: str | None = None,
        type: str | None = None,  # the problem+json member is called "type"
        errors: Mapping[str, list[str]] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code
        self.type = type
        self.errors: dict[str, list[str]] = dict(errors or {})
        self.request_id = request_id


class ValidationError(UMSError):
    """400: malformed or invalid input; ``errors`` maps each bad field to its messages."""


class AuthenticationError(UMSError):
    """401: missing, invalid or expired credentials or token."""


class InvalidToken(AuthenticationError):
    """A token refused by :class:`ums_client.TokenVerifier` (bad signature, expired...)."""

    def __init__(self, detail: str) -> None:
        super().__init__(401, "Unauthorized", detail, code="invalid_token")


class InsufficientAuthentication(InvalidToken):
    """A well-signed access token refused by a :class:`ums_client.TokenVerifier` because its
    ``amr`` lacks a required method (say ``mfa``: the session has not proven a second factor).

    ``code`` is ``insufficient_user_authentication`` (the error of RFC 9470, OAuth step-up);
    ``required`` are the methods asked for and ``amr`` those the token has. Ask the user to
    step up (``POST /api/auth/step-up``) and present the new token.
    """

    def __init__(self, required: frozenset[str], amr: tuple[str, ...]) -> None:
        missing = ", ".join(sorted(required - set(amr)))
        super().__init__(
            f"the token's authentication methods (amr {list(amr)}) lack {missing}: "
            "a second factor must be proven (step up)"
        )
        self.code = "insufficient_user_authentication"
        self.required = required
        self.amr = amr


class SecondStepRequired(AuthenticationError):
    """401 after a right password: the sign-in goes on with a second step.

    ``mfa_token`` carries it on (for ``expires_in`` seconds, 300), ``methods`` are those that
    can take the step (``totp``, ``recovery_code``, ``webauthn``, ``email_code``, or
    ``consent``) and ``webauthn`` the WebAuthn request options when a passkey can answer (else
    ``None``). See :class:`MFARequired`, :class:`MFAEnrollmentRequired`,
    :class:`VerificationRequired` and :class:`ConsentRequired`.
    """

    def __init__(
        self,
        *args: Any,
        mfa_token: str = "",
        methods: tuple[str, ...] = (),
        webauthn: dict[str, Any] | None = None,
        expires_in: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.mfa_token = mfa_token
        self.methods = methods
        self.webauthn = webauthn
        self.expires_in = expires_in


class MFARequired(SecondStepRequired):
    """401 ``mfa_required``: prove a second factor with :meth:`UMSClient.login_mfa`.

    Also raised by :meth:`UMSClient.step_up` (and ``login_mfa``) for ``webauthn`` without an
    assertion: then ``webauthn`` holds fresh request options for the ``mfa_token``.
    """


class MFAEnrollmentRequired(SecondStepRequired):
    """401 ``mfa_enrollment_required``: the account (a system admin, under the server's
    ``UMS_REQUIRE_MFA_FOR_ADMINS``) must enrol a second factor before it can sign in.

    Enrol with the ``mfa_token`` (:meth:`UMSClient.enroll_totp` or
    :meth:`UMSClient.start_passkey_registration`), then prove the new factor with
    :meth:`UMSClient.login_mfa`, whose result carries the account's recovery codes.
    """


class VerificationRequired(SecondStepRequired):
    """401 ``verification_required``: the sign-in of an account without a second factor
    looked risky (a new device, country or place), so UMS emailed a six-digit code to the
    account's address ("Your sign-in code").

    ``methods`` is ``("email_code",)``: finish with
    ``login_mfa(mfa_token, "email_code", code=...)``. As with a second factor, the token dies
    after one success or three wrong codes. The session's ``amr`` is then ``["pwd", "otp"]``,
    without ``mfa``: an emailed code is no second factor.
    """


class ConsentRequired(SecondStepRequired):
    """401 ``consent_required``: the account has not accepted the versions of the terms of
    service and privacy notice in force (the server's ``UMS_TERMS_VERSION`` and
    ``UMS_PRIVACY_VERSION``; :meth:`UMSClient.consent_versions` names them).

    ``methods`` is ``("consent",)``: once the user has accepted them, finish with
    ``login_consent(mfa_token, accept_terms=..., accept_privacy=...)``, whose answer may be the
    next step (:class:`MFARequired` for an account with a second factor, say). No session is
    open until then.
    """


class PermissionDenied(UMSError):
    """403: authenticated but not allowed (also a sign-in from a denylisted address)."""


class StepUpRequired(PermissionDenied):
    """403 ``step_up_required``: this needs a session that proved a second factor (its token's
    ``amr`` has ``mfa``), recently for changes to the account's factors; call
    :meth:`UMSClient.step_up` and try again."""


class ReauthenticationRequired(PermissionDenied):
    """403 ``reauthentication_required``: this needs a recent sign-in (an account without a
    second factor changing its factors); sign in again and try again."""


class MFASetupRequired(PermissionDenied):
    """403 ``mfa_enrollment_required``: a lab that requires a second factor refuses a member
    who has none (and an admin without one, under the server's policy); enrol one
    (:meth:`UMSClient.enroll_totp`) first."""


class PasswordResetRequired(PermissionDenied):
    """403 ``password_reset_required`` at sign-in: the account was reported as taken over
    ("This wasn't me", :meth:`UMSClient.report_not_me`), so its password must be reset
    (:meth:`UMSClient.forgot_password`, :meth:`UMSClient.reset_password`) before it signs in
    again."""


class NotFound(UMSError):
    """404: no such resource (or route)."""


class Conflict(UMSError):
    """409: duplicate username, email, lab code or membership; an invitation answered or
    revoked already."""


class _RetryAfter(UMSError):
    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Seconds to wait before trying again (from ``Retry-After``), if the server said.
        self.retry_after = retry_after


class AccountLocked(_RetryAfter):
    """423: the account is locked after repeated failed logins."""


class RateLimited(_RetryAfter):
    """429: too many requests, or the client IP is blocked."""


class ServiceUnavailable(_RetryAfter):
    """503 from UMS, or UMS could not be reached at all (then ``code`` is ``unreachable``)."""


_BY_STATUS: dict[int, type[UMSError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    423: AccountLocked,
    429: RateLimited,
    503: ServiceUnavailable,
}


# Problem codes that name a more specific exception than the status does.
_BY_CODE: dict[tuple[int, str], type[UMSError]] = {
    (401, "mfa_required"): MFARequired,
    (401, "mfa_enrollment_required"): MFAEnrollmentRequired,
    (401, "verification_required"): VerificationRequired,
    (401, "consent_required"): ConsentRequired,
    (403, "step_up_required"): StepUpRequired,
    (403, "reauthentication_required"): ReauthenticationRequired,
    (403, "mfa_enrollment_required"): MFASetupRequired,
    (403, "password_reset_required"): PasswordResetRequired,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> UMSError:
    """Build the exception matching an error response, reading its problem document if any."""
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    status = response.status_code
    code = problem.get("code")
    cls = _BY_CODE.get((status, code)) if isinstance(code, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, UMSError)
    kwargs: dict[str, Any] = {
        "code": code,
        "type": problem.get("type"),
        "errors": problem.get("errors") if isinstance(problem.get("errors"), dict) else None,
        "request_id": response.headers.get("x-request-id"),
    }
    if issubclass(cls, _RetryAfter):
        kwargs["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
    if issubclass(cls, SecondStepRequired):
        methods = problem.get("methods")
        webauthn = problem.get("webauthn")
        expires_in = problem.get("expires_in")
        kwargs["mfa_token"] = str(problem.get("mfa_token") or "")
        kwargs["methods"] = tuple(methods) if isinstance(methods, list) else ()
        kwargs["webauthn"] = webauthn if isinstance(webauthn, dict) else None
        kwargs["expires_in"] = expires_in if isinstance(expires_in, int) else None
    detail = problem.get("detail")
    if detail is None and not problem and response.text:
        detail = response.text[:200]
    return cls(
        int(problem.get("status") or status),
        str(problem.get("title") or response.reason_phrase or "HTTP error"),
        detail,
        **kwargs,
    )
