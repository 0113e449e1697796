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
    "InvalidToken",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ServiceUnavailable",
    "UMSError",
    "ValidationError",
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


class PermissionDenied(UMSError):
    """403: authenticated but not allowed."""


class NotFound(UMSError):
    """404: no such resource (or route)."""


class Conflict(UMSError):
    """409: duplicate username, email, lab code or membership."""


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
    cls = _BY_STATUS.get(status, UMSError)
    kwargs: dict[str, Any] = {
        "code": problem.get("code"),
        "type": problem.get("type"),
        "errors": problem.get("errors") if isinstance(problem.get("errors"), dict) else None,
        "request_id": response.headers.get("x-request-id"),
    }
    if issubclass(cls, _RetryAfter):
        kwargs["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
    detail = problem.get("detail")
    if detail is None and not problem and response.text:
        detail = response.text[:200]
    return cls(
        int(problem.get("status") or status),
        str(problem.get("title") or response.reason_phrase or "HTTP error"),
        detail,
        **kwargs,
    )
