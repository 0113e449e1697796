"""Typed views of the objects UMS sends (see the HTTP contract, section "Objects")."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

__all__ = [
    "AccessInfo",
    "AuditEvent",
    "ConsentVersions",
    "CountryAttempts",
    "Device",
    "FactorEnrolled",
    "IPFailures",
    "Invitation",
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
    "RiskSignal",
    "SecurityCounts",
    "SecurityEvent",
    "SecuritySummary",
    "Session",
    "TOTPEnrollment",
    "TargetedAccount",
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
    #: Shown to the lab's lab_admins and to system admins only; ``None`` for members and
    #: viewers, who see who is in their lab but not their addresses.
    email: str | None
    first_name: str
    last_name: str

    @classmethod
    def from_json(cls, data: Json) -> MemberUser:
        return cls(
            id=data["id"],
            username=data["username"],
            email=data.get("email"),
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
class Invitation:
    """An invitation to a lab as its lab_admins see it (``/api/labs/{id}/invitations``).

    The person invited answers with the token of the link emailed to ``email``
    (``UMSClient.accept_invitation`` or ``decline_invitation``).
    """

    id: int
    lab_id: int
    #: The invited address, normalised to lower case; whether an account has it is not told.
    email: str
    #: ``lab_admin``, ``member`` or ``viewer``: the role given on acceptance.
    role: str
    #: ``pending``, ``accepted``, ``declined``, ``revoked`` or ``expired``.
    status: str
    created_at: datetime
    expires_at: datetime
    #: When it was accepted, declined or revoked; ``None`` while pending (and once expired).
    answered_at: datetime | None

    @classmethod
    def from_json(cls, data: Json) -> Invitation:
        return cls(
            id=data["id"],
            lab_id=data["lab_id"],
            email=data["email"],
            role=data["role"],
            status=data["status"],
            created_at=_dt(data["created_at"]),
            expires_at=_dt(data["expires_at"]),
            answered_at=parse_datetime(data.get("answered_at")),
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
class Device:
    """A device the caller signed in from (``GET /api/auth/devices``).

    A device becomes known after a sign-in that passed unchallenged or was verified; a sign-in
    from an unknown one weighs more in its risk. UMS recognises it by the ``X-UMS-Device-Id``
    the portal forwards (``UMSClient(device_id=...)``), else by the user agent, languages and
    client hints.
    """

    id: int
    #: In a word, from the user agent: ``Firefox``, ``Chrome``... or ``unknown``.
    browser: str
    #: ``Linux``, ``Windows``, ``macOS``, ``iOS``... or ``unknown``.
    os: str
    first_seen_at: datetime
    last_seen_at: datetime
    #: Where it last signed in from ("Paris, France"), when the server's GeoIP knows.
    last_place: str | None
    last_ip: str | None
    #: The device of the call that listed it.
    current: bool

    @classmethod
    def from_json(cls, data: Json) -> Device:
        return cls(
            id=data["id"],
            browser=data.get("browser") or "unknown",
            os=data.get("os") or "unknown",
            first_seen_at=_dt(data["first_seen_at"]),
            last_seen_at=_dt(data["last_seen_at"]),
            last_place=data.get("last_place"),
            last_ip=data.get("last_ip"),
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
class ConsentVersions:
    """``GET /api/consents``: the versions of the terms of service and of the privacy notice
    in force, which a registration (and a sign-in of an account that has not accepted them)
    must accept; ``None`` when the server asks for none."""

    terms_version: str | None
    privacy_version: str | None

    @classmethod
    def from_json(cls, data: Json) -> ConsentVersions:
        return cls(
            terms_version=data.get("terms_version"),
            privacy_version=data.get("privacy_version"),
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
    #: The event's personal fields (address, browser, names in its details) were erased
    #: with their person; the event itself stays, and the trail still verifies.
    erased: bool = False

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
            erased=bool(data.get("erased", False)),
        )


@dataclass(frozen=True)
class RiskSignal:
    """One reason a sign-in was weighed as risky, with its weight in the score."""

    #: ``new_ip_failure``, ``new_country``, ``unusual_hour``, ``rapid_requests``,
    #: ``malicious_ip``, ``impossible_travel`` or ``new_device``.
    kind: str
    weight: int
    #: In words a user can read ("new country: Japan").
    explanation: str

    @classmethod
    def from_json(cls, data: Json) -> RiskSignal:
        return cls(kind=data["kind"], weight=data["weight"], explanation=data["explanation"])


@dataclass(frozen=True)
class LoginAttempt:
    id: int
    username: str
    ip: str | None
    user_agent: str | None
    success: bool
    attempted_at: datetime
    #: The attempt's risk score, when it was weighed (servers with adaptive sign-in).
    risk_score: int | None = None
    #: The signals that made up the score, when it was weighed.
    risk_signals: tuple[RiskSignal, ...] | None = None
    #: ISO 3166 code of the country of ``ip``, when the server's GeoIP knows it.
    country: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> LoginAttempt:
        signals = data.get("risk_signals")
        return cls(
            id=data["id"],
            username=data["username"],
            ip=data.get("ip"),
            user_agent=data.get("user_agent"),
            success=data["success"],
            attempted_at=_dt(data["attempted_at"]),
            risk_score=data.get("risk_score"),
            risk_signals=None
            if signals is None
            else tuple(RiskSignal.from_json(s) for s in signals),
            country=data.get("country"),
        )


@dataclass(frozen=True)
class SecurityEvent:
    """An event of the security dashboard (``/api/security/events`` and ``/stream``).

    ``action`` is one of ``auth.login_failed``, ``auth.mfa_challenged``, ``auth.mfa_failed``,
    ``security.risky_sign_in``, ``security.risky_sign_in_refused``,
    ``security.account_locked``, ``security.ip_blocked`` and
    ``security.credential_stuffing_detected``.
    """

    id: int
    occurred_at: datetime
    action: str
    success: bool
    user_id: int | None
    ip: str | None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Json) -> SecurityEvent:
        return cls(
            id=data["id"],
            occurred_at=_dt(data["occurred_at"]),
            action=data["action"],
            success=data["success"],
            user_id=data.get("user_id"),
            ip=data.get("ip"),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class SecurityCounts:
    """The numbers of a :class:`SecuritySummary`'s window."""

    sign_ins: int
    failed_sign_ins: int
    risky_sign_ins: int
    #: Sign-ins refused for their risk or address.
    refused: int
    #: Second steps asked for (a second factor or an emailed code).
    challenges: int
    lockouts: int
    ip_blocks: int
    stuffing_alerts: int

    @classmethod
    def from_json(cls, data: Json) -> SecurityCounts:
        return cls(
            sign_ins=data.get("sign_ins", 0),
            failed_sign_ins=data.get("failed_sign_ins", 0),
            risky_sign_ins=data.get("risky_sign_ins", 0),
            refused=data.get("refused", 0),
            challenges=data.get("challenges", 0),
            lockouts=data.get("lockouts", 0),
            ip_blocks=data.get("ip_blocks", 0),
            stuffing_alerts=data.get("stuffing_alerts", 0),
        )


@dataclass(frozen=True)
class IPFailures:
    """An address among a summary's ``top_ips``: its failed sign-ins in the window."""

    ip: str
    failures: int

    @classmethod
    def from_json(cls, data: Json) -> IPFailures:
        return cls(ip=data["ip"], failures=data["failures"])


@dataclass(frozen=True)
class CountryAttempts:
    """A country (ISO 3166 code) among a summary's ``countries``: its sign-in attempts."""

    country: str
    attempts: int

    @classmethod
    def from_json(cls, data: Json) -> CountryAttempts:
        return cls(country=data["country"], attempts=data["attempts"])


@dataclass(frozen=True)
class TargetedAccount:
    """An account among a summary's ``targeted_accounts``: its failed sign-ins."""

    username: str
    failures: int

    @classmethod
    def from_json(cls, data: Json) -> TargetedAccount:
        return cls(username=data["username"], failures=data["failures"])


@dataclass(frozen=True)
class SecuritySummary:
    """``GET /api/security/summary``: the security dashboard's numbers over a window."""

    window_seconds: int
    #: The window's start (``from`` in the JSON) and end.
    from_: datetime
    to: datetime
    counts: SecurityCounts
    top_ips: tuple[IPFailures, ...]
    countries: tuple[CountryAttempts, ...]
    targeted_accounts: tuple[TargetedAccount, ...]

    @classmethod
    def from_json(cls, data: Json) -> SecuritySummary:
        return cls(
            window_seconds=data["window_seconds"],
            from_=_dt(data["from"]),
            to=_dt(data["to"]),
            counts=SecurityCounts.from_json(data.get("counts") or {}),
            top_ips=tuple(IPFailures.from_json(i) for i in data.get("top_ips") or ()),
            countries=tuple(CountryAttempts.from_json(c) for c in data.get("countries") or ()),
            targeted_accounts=tuple(
                TargetedAccount.from_json(a) for a in data.get("targeted_accounts") or ()
            ),
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
