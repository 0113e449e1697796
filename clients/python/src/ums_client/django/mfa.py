"""The second step of a sign-in through UMS: the pending challenge kept in the session.

A right password for an account with a second factor makes :class:`UMSBackend` keep the
sign-in's ``mfa_token`` in the session (never the password) and leave the
:class:`~ums_client.MFARequired` error on ``request.ums_error``. The login view then shows a
second form, and posting it calls ``authenticate(request, mfa_method=..., mfa_code=...)``,
which answers the pending challenge with ``POST /api/auth/login/mfa`` and returns the user
to pass to ``django.contrib.auth.login`` as after a one-step login.

A risky sign-in of an account without a second factor goes the same way, with
:class:`~ums_client.VerificationRequired`: UMS emailed the user a six-digit code, and the
second form asks for it (``mfa_method="email_code"``).

A sign-in of an account that has not accepted the terms of service or privacy notice in force
is kept the same way, with :class:`~ums_client.ConsentRequired` (``PendingMFA.consenting``):
the view shows the documents, and posting the acceptance calls
``authenticate(request, accept_terms=..., accept_privacy=...)``, which answers it with
``POST /api/auth/login/consent``. What follows may be a second step as above.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from ..errors import (
    ConsentRequired,
    MFAEnrollmentRequired,
    SecondStepRequired,
    VerificationRequired,
)
from ..models import TOTPEnrollment
from .store import make_client

__all__ = [
    "MAX_ANSWERS",
    "PENDING_KEY",
    "PendingMFA",
    "forget_pending_mfa",
    "pending_mfa",
    "start_totp_enrollment",
]

#: Where the pending second step lives in ``request.session``.
PENDING_KEY = "_ums_mfa"
#: Wrong answers UMS takes on one ``mfa_token`` before the token dies (then sign in again).
MAX_ANSWERS = 3


@dataclass(frozen=True)
class PendingMFA:
    """A sign-in waiting for its second step (or for its first enrolment)."""

    mfa_token: str
    #: ``mfa_required``; ``mfa_enrollment_required`` for an account that must enrol first;
    #: ``verification_required`` for a risky sign-in confirmed by a code sent by email;
    #: ``consent_required`` for an account that must accept the terms in force first.
    kind: str
    #: Methods that can take the step: ``totp``, ``recovery_code``, ``webauthn``; or
    #: ``email_code`` alone when ``verifying``; ``consent`` alone when ``consenting``.
    methods: tuple[str, ...]
    #: WebAuthn request options for the browser, when a passkey can answer.
    webauthn: dict[str, Any] | None
    #: When UMS forgets the token (seconds since the epoch).
    expires_at: float
    #: Wrong answers so far; at :data:`MAX_ANSWERS` the pending step is dropped.
    wrong_answers: int = 0

    @property
    def enrolling(self) -> bool:
        """The account must enrol a factor (:func:`start_totp_enrollment`) before answering."""
        return self.kind == "mfa_enrollment_required"

    @property
    def verifying(self) -> bool:
        """The sign-in looked risky: answer with the code UMS emailed to the user
        (``mfa_method="email_code"``); no second factor is asked for."""
        return self.kind == "verification_required"

    @property
    def consenting(self) -> bool:
        """The account must accept the terms of service and privacy notice in force
        (``authenticate(request, accept_terms=..., accept_privacy=...)``) to go on."""
        return self.kind == "consent_required"

    @property
    def answers_left(self) -> int:
        return max(0, MAX_ANSWERS - self.wrong_answers)


def remember_pending_mfa(
    request: HttpRequest, error: SecondStepRequired, wrong_answers: int = 0
) -> PendingMFA:
    """Keep the challenge of ``error`` in the session (replacing any earlier one)."""
    if isinstance(error, MFAEnrollmentRequired):
        kind = "mfa_enrollment_required"
    elif isinstance(error, VerificationRequired):
        kind = "verification_required"
    elif isinstance(error, ConsentRequired):
        kind = "consent_required"
    else:
        kind = "mfa_required"
    pending = PendingMFA(
        mfa_token=error.mfa_token,
        kind=kind,
        methods=tuple(error.methods),
        webauthn=error.webauthn,
        expires_at=time.time() + float(error.expires_in or 300),
        wrong_answers=wrong_answers,
    )
    _save(request, pending)
    return pending


def _save(request: HttpRequest, pending: PendingMFA) -> None:
    request.session[PENDING_KEY] = {
        "mfa_token": pending.mfa_token,
        "kind": pending.kind,
        "methods": list(pending.methods),
        "webauthn": pending.webauthn,
        "expires_at": pending.expires_at,
        "wrong_answers": pending.wrong_answers,
    }


def pending_mfa(request: HttpRequest) -> PendingMFA | None:
    """The sign-in of this session waiting for its second step; ``None`` if there is none
    or it has expired (then it is dropped: the user signs in again)."""
    data = request.session.get(PENDING_KEY)
    if not data:
        return None
    pending = PendingMFA(
        mfa_token=data["mfa_token"],
        kind=data["kind"],
        methods=tuple(data["methods"]),
        webauthn=data.get("webauthn"),
        expires_at=float(data["expires_at"]),
        wrong_answers=int(data.get("wrong_answers", 0)),
    )
    if pending.expires_at <= time.time() or pending.answers_left == 0:
        forget_pending_mfa(request)
        return None
    return pending


def count_wrong_answer(request: HttpRequest, pending: PendingMFA) -> PendingMFA | None:
    """Count a refused answer; the pending step is dropped when UMS has killed its token."""
    counted = dataclasses.replace(pending, wrong_answers=pending.wrong_answers + 1)
    if counted.answers_left == 0:
        forget_pending_mfa(request)
        return None
    _save(request, counted)
    return counted


def forget_pending_mfa(request: HttpRequest) -> None:
    """Drop the pending second step (the user gave up, or it is done)."""
    request.session.pop(PENDING_KEY, None)


def start_totp_enrollment(request: HttpRequest) -> TOTPEnrollment:
    """For a pending sign-in that must enrol first: start enrolling an authenticator app.

    Show the result's ``qr_svg`` (or ``secret``); the app's code then answers the pending
    step as usual (``authenticate(request, mfa_method="totp", mfa_code=...)``), and the
    account's recovery codes, shown once, are on ``user.ums_login.recovery_codes`` of the
    user it returns (before ``login()`` takes them away).
    """
    pending = pending_mfa(request)
    if pending is None or not pending.enrolling:
        raise ValueError("no sign-in of this session is waiting for an enrolment")
    with make_client(request=request) as client:
        return client.enroll_totp(mfa_token=pending.mfa_token)
