"""Python client for UMS, the user management service of the lab portal."""

__version__ = "0.1.0"

from .client import UMSClient
from .errors import (
    AccountLocked,
    AuthenticationError,
    Conflict,
    InvalidToken,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UMSError,
    ValidationError,
)
from .models import (
    AccessInfo,
    AuditEvent,
    Lab,
    LoginAttempt,
    LoginResult,
    Member,
    Membership,
    MemberUser,
    Page,
    Session,
    TokenPair,
    User,
)
from .tokens import MemoryTokenStore, TokenStore
from .verifier import TokenVerifier

__all__ = [
    "AccessInfo",
    "AccountLocked",
    "AuditEvent",
    "AuthenticationError",
    "Conflict",
    "InvalidToken",
    "Lab",
    "LoginAttempt",
    "LoginResult",
    "Member",
    "MemberUser",
    "Membership",
    "MemoryTokenStore",
    "NotFound",
    "Page",
    "PermissionDenied",
    "RateLimited",
    "ServiceUnavailable",
    "Session",
    "TokenPair",
    "TokenStore",
    "TokenVerifier",
    "UMSClient",
    "UMSError",
    "User",
    "ValidationError",
    "__version__",
]
