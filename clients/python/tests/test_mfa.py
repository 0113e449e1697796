"""Second factors against the live server: TOTP (codes computed by pyotp from the otpauth URI,
as an authenticator app does), recovery codes, passkeys (a software authenticator below),
the two-step sign-in, step-up, the verifier's amr requirement, the lab and admin policies and
an admin's reset.

UMS takes each 30-second TOTP step once per user, so tests use fresh users and at most two
codes each (:class:`conftest.AuthenticatorApp`), and recovery codes where more answers are
needed: no test waits for the clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ISSUER,
    PASSWORD,
    AuthenticatorApp,
    enrol_totp,
    unique,
    wait_until_expired,
)
from ums_client import (
    AccountLocked,
    AuthenticationError,
    Conflict,
    FactorEnrolled,
    InsufficientAuthentication,
    InvalidToken,
    LoginResult,
    MFAEnrollmentRequired,
    MFARequired,
    MFASetupRequired,
    MFAStatus,
    NotFound,
    Passkey,
    PasskeyChallenge,
    PermissionDenied,
    StepUpRequired,
    TokenPair,
    TokenVerifier,
    TOTPEnrollment,
    ValidationError,
)

NOT_A_RECOVERY_CODE = "aaaa-aaaa-aaaa-aaaa"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def amr(token: str) -> list[str]:
    return list(claims_of(token)["amr"])


def password_step(client, username: str, password: str = PASSWORD) -> MFARequired:
    """The password step of an account with a second factor: its MFARequired."""
    with pytest.raises(MFARequired) as excinfo:
        client.login(username, password)
    return excinfo.value


# -- TOTP and recovery codes --------------------------------------------------------------


def test_totp_is_enrolled_confirmed_and_comes_with_recovery_codes(new_account, make_client, ums):
    account = new_account()
    client = account.client
    assert client.mfa_status() == MFAStatus(
        enabled=False,
        methods=(),
        totp=False,
        totp_pending=False,
        recovery_codes_left=0,
        passkeys=(),
    )

    enrollment = client.enroll_totp()
    assert isinstance(enrollment, TOTPEnrollment)
    assert enrollment.otpauth_uri.startswith(f"otpauth://totp/UMS:{account.username}?")
    assert f"secret={enrollment.secret}" in enrollment.otpauth_uri
    assert "<svg" in enrollment.qr_svg
    status = client.mfa_status()
    assert status.totp_pending and not status.totp and not status.enabled
    # Unconfirmed, it does not count: the password alone still signs in.
    assert amr(make_client(ums).login(account.username, PASSWORD).access_token) == ["pwd"]

    app = AuthenticatorApp.scan(enrollment.otpauth_uri)
    with pytest.raises(ValidationError) as wrong:
        client.confirm_totp(app.wrong_code())
    assert "code" in wrong.value.errors
    enrolled = client.confirm_totp(app.code())
    assert isinstance(enrolled, FactorEnrolled)
    assert enrolled.passkey is None
    codes = enrolled.recovery_codes
    assert codes is not None and len(codes) == 10 and len(set(codes)) == 10

    status = client.mfa_status()
    assert (status.enabled, status.totp, status.totp_pending) == (True, True, False)
    assert status.methods == ("totp", "recovery_code")
    assert status.recovery_codes_left == 10
    assert client.me().mfa_enabled
    # Changing the factors now takes a session that proved one: this one has the password.
    with pytest.raises(StepUpRequired):
        client.enroll_totp()
    client.step_up("totp", app.code())
    with pytest.raises(Conflict):
        client.enroll_totp()  # a confirmed app must be disabled first


def test_sign_in_with_a_totp_code_as_the_second_step(new_account, make_client, ums):
    account = new_account()
    app, _ = enrol_totp(account.client)
    client = make_client(ums)

    step = password_step(client, account.username)
    assert isinstance(step, AuthenticationError)  # code catching the old 401 still works
    assert (step.status, step.code) == (401, "mfa_required")
    assert step.mfa_token
    assert step.methods == ("totp", "recovery_code")
    assert step.expires_in == 300
    assert step.webauthn is None  # no passkey
    assert client.tokens is None

    with pytest.raises(AuthenticationError) as wrong:
        client.login_mfa(step.mfa_token, "totp", app.wrong_code())
    assert not isinstance(wrong.value, MFARequired)
    assert wrong.value.code == "unauthorized"

    result = client.login_mfa(step.mfa_token, "totp", app.code())
    assert isinstance(result, LoginResult)
    assert result.user.id == account.id and result.user.mfa_enabled
    assert result.recovery_codes is None
    assert client.tokens == result.tokens
    claims = claims_of(result.access_token)
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    assert isinstance(claims["auth_time"], int)
    assert client.me().id == account.id

    with pytest.raises(AuthenticationError):  # one success spends the token
        client.login_mfa(step.mfa_token, "totp", app.wrong_code())


def test_one_step_login_with_a_totp_code(new_account, make_client, ums):
    account = new_account()
    app, _ = enrol_totp(account.client)
    client = make_client(ums)
    with pytest.raises(AuthenticationError) as wrong:
        client.login(account.username, PASSWORD, totp_code=app.wrong_code())
    assert not isinstance(wrong.value, MFARequired)
    result = client.login(account.username, PASSWORD, totp_code=app.code())
    assert amr(result.access_token) == ["pwd", "otp", "mfa"]
    assert client.tokens == result.tokens


def test_recovery_codes_are_single_use_and_can_be_replaced(new_account, make_client, ums):
    account = new_account()
    _, codes = enrol_totp(account.client)
    client = make_client(ums)

    first = password_step(client, account.username)
    result = client.login_mfa(first.mfa_token, "recovery_code", codes[0])
    assert amr(result.access_token) == ["pwd", "otp", "mfa"]
    assert client.mfa_status().recovery_codes_left == 9
    mail = ums.wait_for_mail(account.user.email, "A recovery code was used")
    assert "9 unused codes are left" in mail["body"]

    second = password_step(client, account.username)
    with pytest.raises(AuthenticationError):
        client.login_mfa(second.mfa_token, "recovery_code", codes[0])  # spent
    client.login_mfa(second.mfa_token, "recovery_code", codes[1])  # the token took it

    with pytest.raises(ValidationError) as wrong_password:
        client.regenerate_recovery_codes("not the password")
    assert "password" in wrong_password.value.errors
    fresh = client.regenerate_recovery_codes(PASSWORD)
    assert len(fresh) == 10 and not set(fresh) & set(codes)
    assert client.mfa_status().recovery_codes_left == 10

    third = password_step(client, account.username)
    with pytest.raises(AuthenticationError):
        client.login_mfa(third.mfa_token, "recovery_code", codes[2])  # the old set is void
    assert client.login_mfa(third.mfa_token, "recovery_code", fresh[0]).user.id == account.id


def test_wrong_answers_kill_the_token_and_lock_the_account(admin, new_account, make_client, ums):
    account = new_account()
    _, codes = enrol_totp(account.client)
    client = make_client(ums)

    step = password_step(client, account.username)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            client.login_mfa(step.mfa_token, "recovery_code", NOT_A_RECOVERY_CODE)
    with pytest.raises(AuthenticationError) as dead:
        client.login_mfa(step.mfa_token, "recovery_code", codes[0])  # three wrong: token dead
    assert "mfa_token" in (dead.value.detail or "")

    # A right password neither counts nor clears the failures: two more lock the account.
    step = password_step(client, account.username)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            client.login_mfa(step.mfa_token, "recovery_code", NOT_A_RECOVERY_CODE)
    with pytest.raises(AccountLocked) as locked:
        client.login_mfa(step.mfa_token, "recovery_code", codes[0])
    assert (locked.value.status, locked.value.code) == (423, "account_locked")
    assert locked.value.retry_after and locked.value.retry_after > 0
    with pytest.raises(AccountLocked):
        client.login(account.username, PASSWORD)

    admin.unlock_user(account.id)
    step = password_step(client, account.username)
    # The code offered to the dead token and to the locked account was not spent.
    assert client.login_mfa(step.mfa_token, "recovery_code", codes[0]).user.id == account.id


def test_disabling_totp_takes_a_stepped_up_session_the_password_and_a_code(
    new_account, make_client, ums
):
    account = new_account()
    client = account.client
    app, codes = enrol_totp(client)
    with pytest.raises(StepUpRequired):  # a password-only session cannot strip a factor
        client.disable_totp(PASSWORD, codes[0])
    client.step_up("recovery_code", codes[0])

    with pytest.raises(ValidationError) as wrong_password:
        client.disable_totp("not the password", codes[1])
    assert "password" in wrong_password.value.errors
    tokens = client.tokens
    with pytest.raises(AuthenticationError):  # a wrong code is a refused second factor
        client.disable_totp(PASSWORD, app.wrong_code())
    assert client.tokens == tokens  # not taken for a stale token: no refresh, no retry
    assert client.mfa_status().totp

    assert client.disable_totp(PASSWORD, codes[1]) is None
    status = client.mfa_status()
    assert not status.enabled and not status.totp and status.recovery_codes_left == 0
    result = make_client(ums).login(account.username, PASSWORD)  # one step again
    assert amr(result.access_token) == ["pwd"]
    assert not result.user.mfa_enabled


# -- step-up and the verifier ------------------------------------------------------------


def test_step_up_adds_the_factor_to_the_session(new_account):
    account = new_account()  # signed in with the password alone
    client = account.client
    app, _ = enrol_totp(client)
    before = client.tokens
    assert amr(before.access_token) == ["pwd"]

    with pytest.raises(StepUpRequired) as refused:
        client.delete_passkey(10**9)  # removing a factor takes a session that proved one
    assert isinstance(refused.value, PermissionDenied)
    assert (refused.value.status, refused.value.code) == (403, "step_up_required")

    with pytest.raises(AuthenticationError):
        client.step_up("totp", app.wrong_code())
    # Not taken for a stale token: no refresh, no second try of the wrong code.
    assert client.tokens == before
    assert client.me().id == account.id

    stepped = client.step_up("totp", app.code())
    assert isinstance(stepped, TokenPair)
    assert client.tokens == stepped
    old, new = claims_of(before.access_token), claims_of(stepped.access_token)
    assert new["amr"] == ["pwd", "otp", "mfa"]
    assert new["sid"] == old["sid"]  # the same session
    assert new["auth_time"] >= old["auth_time"]
    with pytest.raises(NotFound):
        client.delete_passkey(10**9)  # past the step-up check now

    refreshed = client.refresh()  # refreshes keep the session's methods
    assert amr(refreshed.access_token) == ["pwd", "otp", "mfa"]


def test_step_up_refreshes_an_expired_access_token_first(ums_short, new_account):
    """step_up never retries after a 401 (that could be a refused answer), so it refreshes a
    token about to expire before the call."""
    account = new_account(server=ums_short)
    _, codes = enrol_totp(account.client)
    before = account.client.tokens
    wait_until_expired(ums_short, before.access_token)

    stepped = account.client.step_up("recovery_code", codes[0])
    assert stepped.refresh_token != before.refresh_token
    assert amr(stepped.access_token) == ["pwd", "otp", "mfa"]
    assert account.client.mfa_status().recovery_codes_left == 9


def test_verifier_can_require_a_second_factor(ums, new_account):
    stepped_up = new_account()
    _, codes = enrol_totp(stepped_up.client)
    mfa_token = stepped_up.client.step_up("recovery_code", codes[0]).access_token
    password_only = new_account().client.tokens.access_token

    with TokenVerifier(ums.url, issuer=ISSUER, require_mfa=True) as verifier:
        assert verifier.required_amr == {"mfa"}
        assert verifier.verify(mfa_token)["amr"] == ["pwd", "otp", "mfa"]
        with pytest.raises(InsufficientAuthentication) as refused:
            verifier.verify(password_only)
        error = refused.value
        assert isinstance(error, InvalidToken)  # code that catches InvalidToken refuses it too
        assert error.code == "insufficient_user_authentication"
        assert error.status == 401
        assert error.amr == ("pwd",) and error.required == {"mfa"}
        assert "mfa" in str(error)
        with pytest.raises(InsufficientAuthentication, match="hwk"):
            verifier.verify(mfa_token, required_amr={"hwk"})  # per call: a passkey

    with TokenVerifier(ums.url, issuer=ISSUER) as plain:
        assert plain.verify(password_only)["amr"] == ["pwd"]
        with pytest.raises(InsufficientAuthentication):
            plain.verify(password_only, required_amr={"mfa"})
        with pytest.raises(TypeError):
            plain.verify(mfa_token, required_amr="mfa")  # a string, not a set of methods
    with TokenVerifier(ums.url, issuer=ISSUER, required_amr={"otp"}) as otp:
        assert otp.verify(mfa_token)["sub"] == str(stepped_up.id)


# -- admins: reset, lab policy, enrolment policy ------------------------------------------


def test_admin_resets_a_users_factors(admin, new_account, make_client, ums):
    account = new_account()
    enrol_totp(account.client)
    with pytest.raises(PermissionDenied):
        new_account().client.reset_user_mfa(account.id)
    with pytest.raises(NotFound):
        admin.reset_user_mfa(10**9)

    assert admin.reset_user_mfa(account.id) is None
    with pytest.raises(AuthenticationError):
        account.client.me()  # the user's sessions were revoked with the factors
    client = make_client(ums)
    result = client.login(account.username, PASSWORD)  # the password alone again
    assert amr(result.access_token) == ["pwd"]
    assert not result.user.mfa_enabled
    status = client.mfa_status()
    assert not status.enabled and status.recovery_codes_left == 0 and status.methods == ()


def test_lab_requiring_mfa_refuses_members_without_a_factor(admin, new_account):
    lab = admin.create_lab(unique("mfa"), "Second factor lab")
    assert lab.require_mfa is False
    member = new_account()
    admin.add_member(lab.id, member.id, "member")
    assert member.client.lab_access(lab.id).role == "member"

    updated = admin.update_lab(lab.id, require_mfa=True)
    assert updated.require_mfa is True
    assert admin.get_lab(lab.id).require_mfa is True
    with pytest.raises(MFASetupRequired) as refused:
        member.client.lab_access(lab.id)
    assert isinstance(refused.value, PermissionDenied)
    assert (refused.value.status, refused.value.code) == (403, "mfa_enrollment_required")
    with pytest.raises(MFASetupRequired):
        member.client.get_lab(lab.id)

    app, _ = enrol_totp(member.client)
    # A factor is not enough: the session must have proven it.
    with pytest.raises(StepUpRequired):
        member.client.lab_access(lab.id)
    member.client.step_up("totp", app.code())
    assert member.client.lab_access(lab.id).role == "member"
    assert admin.update_lab(lab.id, require_mfa=False).require_mfa is False


def test_an_admin_must_enrol_at_sign_in_when_the_policy_is_on(pool, make_client):
    server = pool.start(UMS_REQUIRE_MFA_FOR_ADMINS="true")  # the server's default
    client = make_client(server)
    with pytest.raises(MFAEnrollmentRequired) as excinfo:
        client.login(ADMIN_USERNAME, ADMIN_PASSWORD)
    step = excinfo.value
    assert isinstance(step, AuthenticationError) and not isinstance(step, MFARequired)
    assert (step.status, step.code) == (401, "mfa_enrollment_required")
    assert step.methods == ("totp", "webauthn")
    assert step.mfa_token and step.expires_in == 300
    assert client.tokens is None

    app = AuthenticatorApp.scan(client.enroll_totp(mfa_token=step.mfa_token).otpauth_uri)
    result = client.login_mfa(step.mfa_token, "totp", app.code())
    assert result.user.is_admin and result.user.mfa_enabled
    assert result.recovery_codes is not None and len(result.recovery_codes) == 10
    assert amr(result.access_token) == ["pwd", "otp", "mfa"]
    assert client.tokens == result.tokens
    assert client.mfa_status().methods == ("totp", "recovery_code")
    with pytest.raises(Conflict):  # an admin keeps a factor under the policy
        client.disable_totp(ADMIN_PASSWORD, result.recovery_codes[0])

    step = password_step(make_client(server), ADMIN_USERNAME, ADMIN_PASSWORD)  # enrolled now
    assert step.methods == ("totp", "recovery_code")


# -- passkeys -----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cbor(value: Any) -> bytes:
    """The little CBOR (RFC 8949) WebAuthn needs: integers, byte and text strings, maps."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([major << 5 | info]) + struct.pack(fmt, n)
        raise ValueError(n)

    if isinstance(value, int) and not isinstance(value, bool):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        return head(3, len(value.encode())) + value.encode()
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(type(value))


class SoftPasskey:
    """A software authenticator holding one ES256 passkey, playing the browser's part too.

    It reports user presence and verification (passkeys require the latter) and "none"
    attestation, and signs ``authenticatorData || sha256(clientDataJSON)``. Like a
    resident key it answers a request that names no credential (a passwordless sign-in)
    with its own, and hands back the user handle. The PyPI package soft-webauthn would need
    fido2 < 2 (so cryptography < 45) and sets no user-verification flag, hence this.
    """

    FLAGS_UP, FLAGS_UV, FLAGS_AT = 0x01, 0x04, 0x40

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.rp_id = ""
        self.user_handle = ""
        self.counter = 0

    def _client_data(self, kind: str, challenge: str) -> bytes:
        data = {"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": False}
        return json.dumps(data).encode()

    def create(self, options: dict[str, Any]) -> dict[str, Any]:
        """``navigator.credentials.create`` for the creation options UMS sent."""
        public_key = options["publicKey"]
        assert {"type": "public-key", "alg": -7} in public_key["pubKeyCredParams"]
        self.rp_id = public_key["rp"]["id"]
        self.user_handle = public_key["user"]["id"]
        point = self.key.public_key().public_numbers()
        cose_key = cbor(
            {1: 2, 3: -7, -1: 1, -2: point.x.to_bytes(32, "big"), -3: point.y.to_bytes(32, "big")}
        )
        auth_data = (
            hashlib.sha256(self.rp_id.encode()).digest()
            + bytes([self.FLAGS_UP | self.FLAGS_UV | self.FLAGS_AT])
            + struct.pack(">I", self.counter)
            + bytes(16)  # AAGUID
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + cose_key
        )
        attestation = cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", public_key["challenge"])
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
            },
            "extensions": {},
        }

    def get(self, options: dict[str, Any]) -> dict[str, Any]:
        """``navigator.credentials.get`` for the request options UMS sent."""
        public_key = options["publicKey"]
        assert public_key["rpId"] == self.rp_id
        allowed = [unb64url(c["id"]) for c in public_key.get("allowCredentials", [])]
        assert not allowed or self.credential_id in allowed
        self.counter += 1
        auth_data = (
            hashlib.sha256(self.rp_id.encode()).digest()
            + bytes([self.FLAGS_UP | self.FLAGS_UV])
            + struct.pack(">I", self.counter)
        )
        client_data = self._client_data("webauthn.get", public_key["challenge"])
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64url(auth_data),
                "clientDataJSON": b64url(client_data),
                "signature": b64url(signature),
                "userHandle": self.user_handle,
            },
            "extensions": {},
        }


def test_a_passkey_is_a_second_factor_signs_in_alone_and_steps_up(new_account, make_client, ums):
    # The shared server's relying party is its UMS_PUBLIC_URL (http://ums.test).
    key = SoftPasskey(ISSUER)
    account = new_account()  # a password-only session, stepped up below
    client = account.client

    start = client.start_passkey_registration()
    assert start.registration_token
    assert start.webauthn["publicKey"]["rp"]["id"] == "ums.test"
    finished = client.finish_passkey_registration(
        start.registration_token, key.create(start.webauthn), name="Soft key"
    )
    assert isinstance(finished.passkey, Passkey)
    assert finished.passkey.name == "Soft key" and finished.passkey.last_used_at is None
    assert finished.recovery_codes is not None and len(finished.recovery_codes) == 10
    with pytest.raises(ValidationError):  # a registration token is good once
        client.finish_passkey_registration(start.registration_token, key.create(start.webauthn))

    passkey_id = finished.passkey.id
    assert client.list_passkeys() == [finished.passkey]
    assert client.rename_passkey(passkey_id, "YubiKey 5") is None
    status = client.mfa_status()
    assert status.methods == ("recovery_code", "webauthn")
    assert [p.name for p in status.passkeys] == ["YubiKey 5"]

    # As the second factor: the login's answer carries WebAuthn request options.
    browser = make_client(ums)
    step = password_step(browser, account.username)
    assert "webauthn" in step.methods
    assert step.webauthn is not None and step.webauthn["publicKey"]["challenge"]
    # Asked for without an assertion: fresh options on the same token.
    with pytest.raises(MFARequired) as renewed:
        browser.login_mfa(step.mfa_token, "webauthn")
    assert renewed.value.mfa_token == step.mfa_token
    options = renewed.value.webauthn
    assert options["publicKey"]["challenge"] != step.webauthn["publicKey"]["challenge"]
    result = browser.login_mfa(step.mfa_token, "webauthn", assertion=key.get(options))
    assert amr(result.access_token) == ["pwd", "hwk", "mfa"]
    assert client.list_passkeys()[0].last_used_at is not None

    # Alone, without a username or password.
    challenge = make_client(ums).login_passkey_start()
    assert isinstance(challenge, PasskeyChallenge) and challenge.expires_in == 300
    passwordless = make_client(ums)
    result = passwordless.login_mfa(
        challenge.mfa_token, "webauthn", assertion=key.get(challenge.webauthn)
    )
    assert result.user.id == account.id
    assert amr(result.access_token) == ["hwk", "mfa"]
    assert passwordless.tokens == result.tokens

    # Step-up with the passkey: a first call gets the options, a second answers them.
    with pytest.raises(StepUpRequired):
        client.delete_passkey(passkey_id)
    with pytest.raises(MFARequired) as excinfo:
        client.step_up("webauthn")
    assert excinfo.value.mfa_token and excinfo.value.webauthn
    stepped = client.step_up(
        "webauthn", assertion=key.get(excinfo.value.webauthn), mfa_token=excinfo.value.mfa_token
    )
    assert amr(stepped.access_token) == ["pwd", "hwk", "mfa"]
    assert client.delete_passkey(passkey_id) is None
    assert client.list_passkeys() == []
    assert not client.mfa_status().enabled
