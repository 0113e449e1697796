"""Typed views of the objects UMS sends (see the HTTP contract, section "Objects")."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

__all__ = [
    "AccessInfo",
    "AuditEvent",
    "FactorEnrolled",
    "Lab",
    "LoginAttempt",
    "LoginResult",
    "MFAStatus",
    "Member",
    "MemberUser",
    "Membership",
    "Page",
    "Passkey",
    "PasskeyChallenge",
    "PasskeyRegistration",
    "Session",
    "TOTPEnrollment",
    "TokenPair",
    "User",
    "parse_datetime",
]

T = TypeVar("T")
Json = Mapping[str, Any]


def parse_datetime(value: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp (``2026-01-02T03:04:05.678Z``) into an aware datetime."""
    if value is None:
        return None
    if value.endswith(("Z", "z")):  # fromisoformat accepts "Z" only from Python 3.11 on
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(value)


def _dt(value: str) -> datetime:
    parsed = parse_datetime(value)
    assert parsed is not None
    return parsed


@dataclass(frozen=True)
class Membership:
    """A lab as seen by a member (``GET /api/users/{id}/labs``, ``labs`` of me and login)."""

    id: int
    code: str
    name: str
    role: str
    is_active: bool

    @classmethod
    def from_json(cls, data: Json) -> Membership:
        return cls(
            id=data["id"],
            code=data["code"],
            name=data["name"],
            role=data["role"],
            is_active=data["is_active"],
        )


@dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str
    first_name: str
    last_name: str
    is_active: bool
    is_admin: bool
    email_verified: bool
    is_locked: bool
    mfa_enabled: bool
    last_login_at: datetime | None
    password_changed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: Present only where the server includes it (``/api/auth/me`` and login).
    labs: tuple[Membership, ...] | None = None

    @classmethod
    def from_json(cls, data: Json) -> User:
        labs = data.get("labs")
        return cls(
            id=data["id"],
            username=data["username"],
            email=data["email"],
            first_name=data.get("first_name") or "",
            last_name=data.get("last_name") or "",
            is_active=data["is_active"],
            is_admin=data["is_admin"],
            email_verified=data.get("email_verified", False),
            is_locked=data.get("is_locked", False),
            mfa_enabled=data.get("mfa_enabled", False),
            last_login_at=parse_datetime(data.get("last_login_at")),
            password_changed_at=parse_datetime(data.get("password_changed_at")),
            created_at=_dt(data["created_at"]),
            updated_at=_dt(data["updated_at"]),
            labs=None if labs is None else tuple(Membership.from_json(m) for m in labs),
        )


@dataclass(frozen=True)
class Lab:
    id: int
    code: str
    name: str
    description: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    #: Members without a second factor are refused the lab (set by system admins).
    require_mfa: bool = False

    @classmethod
    def from_json(cls, data: Json) -> Lab:
        return cls(
            id=data["id"],
            code=data["code"],
            name=data["name"],
            description=data.get("description") or "",
            is_active=data["is_active"],
            created_at=_dt(data["created_at"]),
            updated_at=_dt(data["updated_at"]),
            require_mfa=data.get("require_mfa", False),
        )


@dataclass(frozen=True)
class MemberUser:
    """The short user record inside a lab's member list."""

    id: int
    username: str
    email: str
    first_name: str
    last_name: str

    @classmethod
    def from_json(cls, data: Json) -> MemberUser:
        return cls(
            id=data["id"],
            username=data["username"],
            email=data["email"],
            first_name=data.get("first_name") or "",
            last_name=data.get("last_name") or "",
        )


@dataclass(frozen=True)
class Member:
    """A user as seen from a lab (``GET /api/labs/{id}/members``)."""

    user: MemberUser
    role: str
    joined_at: datetime

    @classmethod
    def from_json(cls, data: Json) -> Member:
        return cls(
            user=MemberUser.from_json(data["user"]),
            role=data["role"],
            joined_at=_dt(data["joined_at"]),
        )


@dataclass(frozen=True)
class Session:
    """One login's session; ``id`` is the ``sid`` claim of its tokens."""

    id: str
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime | None
    current: bool

    @classmethod
    def from_json(cls, data: Json) -> Session:
        return cls(
            id=data["id"],
            ip=data.get("ip"),
            user_agent=data.get("user_agent"),
            created_at=_dt(data["created_at"]),
            last_used_at=parse_datetime(data.get("last_used_at")),
            current=data.get("current", False),
        )


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str | None
    token_type: str = "Bearer"
    expires_in: int | None = None

    @classmethod
    def from_json(cls, data: Json) -> TokenPair:
        return cls(
            access_token=data["access_token"],
            refresh_token=data.get("refresh_token"),
            token_type=data.get("token_type", "Bearer"),
            expires_in=data.get("expires_in"),
        )


@dataclass(frozen=True)
class LoginResult:
    tokens: TokenPair
    user: User
    #: Shown once: the account's ten recovery codes, when this sign-in confirmed its first
    #: factor (an admin's enrolment at sign-in); otherwise ``None``.
    recovery_codes: tuple[str, ...] | None = None

    @property
    def access_token(self) -> str:
        return self.tokens.access_token

    @property
    def refresh_token(self) -> str | None:
        return self.tokens.refresh_token

    @classmethod
    def from_json(cls, data: Json) -> LoginResult:
        codes = data.get("recovery_codes")
        return cls(
            tokens=TokenPair.from_json(data),
            user=User.from_json(data["user"]),
            recovery_codes=None if codes is None else tuple(codes),
        )


@dataclass(frozen=True)
class Passkey:
    """A registered passkey as its owner sees it."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def from_json(cls, data: Json) -> Passkey:
        return cls(
            id=data["id"],
            name=data["name"],
            created_at=_dt(data["created_at"]),
            last_used_at=parse_datetime(data.get("last_used_at")),
        )


@dataclass(frozen=True)
class MFAStatus:
    """``GET /api/auth/mfa``: the caller's second factors."""

    enabled: bool
    #: Those that can prove a factor: ``totp``, ``recovery_code``, ``webauthn``.
    methods: tuple[str, ...]
    totp: bool
    #: A TOTP enrolment was started and not confirmed yet.
    totp_pending: bool
    recovery_codes_left: int
    passkeys: tuple[Passkey, ...]

    @classmethod
    def from_json(cls, data: Json) -> MFAStatus:
        return cls(
            enabled=data["enabled"],
            methods=tuple(data.get("methods") or ()),
            totp=data.get("totp", False),
            totp_pending=data.get("totp_pending", False),
            recovery_codes_left=data.get("recovery_codes_left", 0),
            passkeys=tuple(Passkey.from_json(p) for p in data.get("passkeys") or ()),
        )


@dataclass(frozen=True)
class TOTPEnrollment:
    """A started TOTP enrolment: show ``qr_svg`` (or ``secret``) to the user's authenticator
    app, then confirm with a code it shows."""

    #: The shared secret, base32.
    secret: str
    #: ``otpauth://totp/...``, what the QR code holds.
    otpauth_uri: str
    #: The QR code as an SVG document.
    qr_svg: str

    @classmethod
    def from_json(cls, data: Json) -> TOTPEnrollment:
        return cls(secret=data["secret"], otpauth_uri=data["otpauth_uri"], qr_svg=data["qr_svg"])


@dataclass(frozen=True)
class FactorEnrolled:
    """A factor added: the account's recovery codes (shown once) when it was its first."""

    recovery_codes: tuple[str, ...] | None = None
    #: The new passkey, after a passkey registration.
    passkey: Passkey | None = None

    @classmethod
    def from_json(cls, data: Json) -> FactorEnrolled:
        codes, passkey = data.get("recovery_codes"), data.get("passkey")
        return cls(
            recovery_codes=None if codes is None else tuple(codes),
            passkey=None if passkey is None else Passkey.from_json(passkey),
        )


@dataclass(frozen=True)
class PasskeyRegistration:
    """A started passkey registration: pass ``webauthn`` (the creation options, with
    ``publicKey`` inside) to ``navigator.credentials.create`` and finish with the credential."""

    registration_token: str
    webauthn: dict[str, Any]

    @classmethod
    def from_json(cls, data: Json) -> PasskeyRegistration:
        return cls(registration_token=data["registration_token"], webauthn=dict(data["webauthn"]))


@dataclass(frozen=True)
class PasskeyChallenge:
    """A passwordless sign-in's first half: answer ``webauthn`` (request options for
    ``navigator.credentials.get``) with ``login_mfa(mfa_token, "webauthn", assertion=...)``."""

    mfa_token: str
    webauthn: dict[str, Any]
    expires_in: int

    @classmethod
    def from_json(cls, data: Json) -> PasskeyChallenge:
        return cls(
            mfa_token=data["mfa_token"],
            webauthn=dict(data["webauthn"]),
            expires_in=data["expires_in"],
        )


@dataclass(frozen=True)
class AccessInfo:
    """``GET /api/labs/{id}/access``: the caller's role in a lab (``admin`` for system admins)."""

    lab_id: int
    role: str
    permissions: tuple[str, ...]

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @classmethod
    def from_json(cls, data: Json) -> AccessInfo:
        return cls(lab_id=data["lab_id"], role=data["role"], permissions=tuple(data["permissions"]))


@dataclass(frozen=True)
class AuditEvent:
    id: int
    occurred_at: datetime
    action: str
    success: bool
    user_id: int | None
    actor_ip: str | None
    user_agent: str | None
    resource_type: str | None
    resource_id: str | None
    lab_id: int | None
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> AuditEvent:
        resource_id = data.get("resource_id")
        return cls(
            id=data["id"],
            occurred_at=_dt(data["occurred_at"]),
            action=data["action"],
            success=data["success"],
            user_id=data.get("user_id"),
            actor_ip=data.get("actor_ip"),
            user_agent=data.get("user_agent"),
            resource_type=data.get("resource_type"),
            resource_id=None if resource_id is None else str(resource_id),
            lab_id=data.get("lab_id"),
            details=dict(data.get("details") or {}),
            request_id=data.get("request_id"),
        )


@dataclass(frozen=True)
class LoginAttempt:
    id: int
    username: str
    ip: str | None
    user_agent: str | None
    success: bool
    attempted_at: datetime

    @classmethod
    def from_json(cls, data: Json) -> LoginAttempt:
        return cls(
            id=data["id"],
            username=data["username"],
            ip=data.get("ip"),
            user_agent=data.get("user_agent"),
            success=data["success"],
            attempted_at=_dt(data["attempted_at"]),
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a paginated listing: ``pages`` is ``ceil(total / per_page)``."""

    items: tuple[T, ...]
    total: int
    page: int
    per_page: int
    pages: int

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @classmethod
    def from_json(cls, data: Json, item: Callable[[Json], T]) -> Page[T]:
        return cls(
            items=tuple(item(i) for i in data["items"]),
            total=data["total"],
            page=data["page"],
            per_page=data["per_page"],
            pages=data["pages"],
        )
