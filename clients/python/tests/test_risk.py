"""Adaptive sign-in against the live server: the emailed code that confirms a risky sign-in,
the devices UMS remembers and how the client names one (``device_id``, headers), and places
from a small GeoIP database written here (addresses set through a trusted proxy's
``X-Forwarded-For``).

Most tests use the ``risky`` server, where a new device alone asks for the emailed code: an
account's first sign-in has no history and passes, its next from another device does not.
Codes are read from the server's log, where UMS writes its mail when no SMTP is configured.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from conftest import (
    LISTED,
    PARIS,
    PASSWORD,
    SIGN_IN_CODE_SUBJECT,
    TOKYO,
    new_device,
    not_the_code,
    registered,
    verification_step,
)
from ums_client import (
    DEVICE_ID_HEADER,
    AuthenticationError,
    Device,
    LoginResult,
    MFARequired,
    NotFound,
    PermissionDenied,
    RiskSignal,
    SecondStepRequired,
    UMSClient,
)

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)


def amr(token: str) -> list[str]:
    return list(jwt.decode(token, options={"verify_signature": False})["amr"])


# -- the emailed code -------------------------------------------------------------------


def test_a_sign_in_from_a_new_device_is_confirmed_with_an_emailed_code(risky, make_client):
    _, username, email = registered(risky, make_client, device_id=new_device())
    phone_id = new_device()
    phone = make_client(risky, device_id=phone_id)

    step, code = verification_step(risky, phone, username, email)
    assert isinstance(step, SecondStepRequired) and isinstance(step, AuthenticationError)
    assert not isinstance(step, MFARequired)  # callers tell it from a second factor
    assert (step.status, step.code) == (401, "verification_required")
    assert step.methods == ("email_code",)
    assert step.mfa_token and step.expires_in and step.expires_in > 0
    assert step.webauthn is None
    assert phone.tokens is None

    with pytest.raises(AuthenticationError) as wrong:
        phone.login_mfa(step.mfa_token, "email_code", not_the_code(code))
    assert not isinstance(wrong.value, SecondStepRequired)
    result = phone.login_mfa(step.mfa_token, "email_code", code)
    assert isinstance(result, LoginResult) and result.user.username == username
    assert phone.tokens == result.tokens
    # A code sent by email proves the mailbox, not a second factor: no "mfa".
    assert amr(result.access_token) == ["pwd", "otp"]
    assert phone.me().username == username
    with pytest.raises(AuthenticationError):  # one success spends the token
        phone.login_mfa(step.mfa_token, "email_code", code)

    # Verified, the device is known: its next sign-in passes.
    again = make_client(risky, device_id=phone_id).login(username, PASSWORD)
    assert amr(again.access_token) == ["pwd"]


def test_three_wrong_codes_kill_the_token(risky, make_client):
    _, username, email = registered(risky, make_client, device_id=new_device())
    phone = make_client(risky, device_id=new_device())

    step, code = verification_step(risky, phone, username, email)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            phone.login_mfa(step.mfa_token, "email_code", not_the_code(code))
    with pytest.raises(AuthenticationError) as dead:
        phone.login_mfa(step.mfa_token, "email_code", code)  # the right code, too late
    assert not isinstance(dead.value, SecondStepRequired)
    assert phone.tokens is None

    # Still an unknown device: a new sign-in, a new code.
    step, fresh = verification_step(risky, phone, username, email)
    assert amr(phone.login_mfa(step.mfa_token, "email_code", fresh).access_token) == ["pwd", "otp"]


# -- devices ----------------------------------------------------------------------------


def test_devices_are_listed_and_forgotten(risky, make_client):
    laptop, username, email = registered(
        risky, make_client, headers={"User-Agent": FIREFOX, "Accept-Language": "fr-FR"}
    )
    mac = make_client(risky, headers={"User-Agent": SAFARI, "Accept-Language": "fr-FR"})
    step, code = verification_step(risky, mac, username, email)
    mac.login_mfa(step.mfa_token, "email_code", code)

    devices = mac.list_devices()
    assert all(isinstance(d, Device) for d in devices)
    assert [(d.browser, d.os) for d in devices] == [("Safari", "macOS"), ("Firefox", "Linux")]
    safari, firefox = devices  # the latest first
    assert (safari.current, firefox.current) == (True, False)
    assert [d.current for d in laptop.list_devices()] == [False, True]  # each sees its own
    for device in devices:
        assert device.last_ip == "127.0.0.1"
        assert device.last_place is None  # this server has no GeoIP database
        assert device.first_seen_at <= device.last_seen_at
        assert device.first_seen_at.tzinfo is not None

    assert laptop.forget_device(safari.id) is None
    assert [d.id for d in laptop.list_devices()] == [firefox.id]
    with pytest.raises(NotFound):
        laptop.forget_device(safari.id)  # gone
    stranger, _, _ = registered(risky, make_client)
    with pytest.raises(NotFound):
        stranger.forget_device(firefox.id)  # not the stranger's
    # Forgotten, the Mac is a new device again: its next sign-in asks for a code.
    again = make_client(risky, headers={"User-Agent": SAFARI, "Accept-Language": "fr-FR"})
    verification_step(risky, again, username, email)


def test_the_device_id_names_the_device_whatever_the_browser_says(risky, make_client):
    device = new_device()
    first, username, email = registered(
        risky, make_client, device_id=device, headers={"User-Agent": FIREFOX}
    )
    assert first.device_id == device
    # Another user agent with the same id: the same device, no code.
    same = make_client(risky, device_id=device, headers={"User-Agent": SAFARI})
    assert amr(same.login(username, PASSWORD).access_token) == ["pwd"]
    [known] = same.list_devices()
    assert known.current
    # The same user agent without the id: another device.
    verification_step(risky, make_client(risky, headers={"User-Agent": FIREFOX}), username, email)

    # Sent on every request, as the header UMS reads.
    recording = Recording()
    with UMSClient(risky.url, device_id=device, transport=recording) as client:
        client.health()
        client.login(username, PASSWORD)
    assert [r.headers[DEVICE_ID_HEADER] for r in recording.requests] == [device, device]


# -- places (GeoIP) ---------------------------------------------------------------------


def from_address(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def test_impossible_travel_asks_for_the_emailed_code(geo, make_client, admin_of):
    device = new_device()
    paris, username, email = registered(
        geo, make_client, device_id=device, headers=from_address(PARIS)
    )
    [device_in_paris] = paris.list_devices()
    assert device_in_paris.last_place == "Paris, France"
    assert device_in_paris.last_ip == PARIS

    # The same device in Tokyo minutes later: a new country, and too far to have travelled.
    tokyo = make_client(geo, device_id=device, headers=from_address(TOKYO))
    step, code = verification_step(geo, tokyo, username, email)
    mail = geo.wait_for_mail(email, SIGN_IN_CODE_SUBJECT)
    assert "Tokyo, Japan" in mail["body"]  # the email says where, and why
    assert "new country: Japan" in mail["body"]
    result = tokyo.login_mfa(step.mfa_token, "email_code", code)
    assert amr(result.access_token) == ["pwd", "otp"]
    [moved] = tokyo.list_devices()
    assert (moved.last_place, moved.last_ip) == ("Tokyo, Japan", TOKYO)

    # The attempts carry their risk, where the server reports it.
    admin = admin_of(geo)
    raw = admin_raw(admin, "/api/security/login-attempts", username=username)
    if "risk_score" not in raw["items"][0]:
        pytest.skip("this server build does not report risk on login attempts yet")
    attempts = sorted(admin.list_login_attempts(username=username), key=lambda a: a.id)
    first = attempts[0]
    assert (first.country, first.risk_score, first.success) == ("FR", 0, True)
    assert not first.risk_signals  # a first sign-in has nothing to differ from
    in_tokyo = attempts[1]
    assert in_tokyo.country == "JP"
    assert in_tokyo.risk_signals is not None
    assert all(isinstance(s, RiskSignal) and s.explanation for s in in_tokyo.risk_signals)
    assert {s.kind for s in in_tokyo.risk_signals} == {"new_country", "impossible_travel"}
    assert in_tokyo.risk_score == sum(s.weight for s in in_tokyo.risk_signals) == 90


def test_a_sign_in_too_risky_is_refused_as_a_wrong_password_is(geo, make_client, admin_of):
    _, username, email = registered(
        geo, make_client, device_id=new_device(), headers=from_address(PARIS)
    )
    # Another device, in Tokyo minutes later: 10 + 30 + 60, past the refusal threshold (90).
    stranger = make_client(geo, device_id=new_device(), headers=from_address(TOKYO))
    with pytest.raises(AuthenticationError) as refused:
        stranger.login(username, PASSWORD)
    assert not isinstance(refused.value, SecondStepRequired)
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    with pytest.raises(AuthenticationError) as wrong:
        stranger.login(username, "not the password")
    assert wrong.value.detail == refused.value.detail  # nothing tells the two apart
    assert stranger.tokens is None
    mail = geo.wait_for_mail(email, "A risky sign-in to your account was blocked")
    assert "Tokyo, Japan" in mail["body"]

    admin = admin_of(geo)
    [event] = admin.security_events(action="security.risky_sign_in_refused", ip=TOKYO).items
    assert event.success is False and event.details["risk"]["score"] == 100


def test_a_denylisted_address_is_refused_before_the_password(geo, make_client):
    _, username, _ = registered(geo, make_client, headers=from_address(PARIS))
    listed = make_client(geo, headers=from_address(LISTED))
    with pytest.raises(PermissionDenied) as refused:
        listed.login(username, PASSWORD)
    assert refused.value.status == 403
    assert "denylist" in (refused.value.detail or "")
    assert listed.tokens is None


def admin_raw(admin: UMSClient, path: str, **params: Any) -> dict[str, Any]:
    """A listing as the server sends it (to tell a missing member from a null one)."""
    tokens = admin.tokens
    assert tokens is not None
    headers = {"Authorization": f"Bearer {tokens.access_token}"}
    response = httpx.get(f"{admin.base_url}{path}", params=params, headers=headers, timeout=10)
    response.raise_for_status()
    return dict(response.json())


class Recording(httpx.HTTPTransport):
    """Keeps the requests sent through it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)
