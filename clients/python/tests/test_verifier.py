"""Offline verification of access tokens with TokenVerifier against the live JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from conftest import (
    ISSUER,
    PASSWORD,
    CountingTransport,
    free_port,
    unique,
    wait_until_expired,
)
from ums_client import InvalidToken, ServiceUnavailable, TokenVerifier, UMSClient

JWKS = "/.well-known/jwks.json"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def transport() -> CountingTransport:
    return CountingTransport()


@pytest.fixture
def verifier(ums, transport) -> Iterator[TokenVerifier]:
    with TokenVerifier(ums.url, issuer=ISSUER, transport=transport) as v:
        yield v


@pytest.fixture
def token(new_account) -> str:
    return new_account().client.tokens.access_token


def test_valid_access_token_gives_its_claims(verifier, new_account):
    account = new_account()
    claims = verifier.verify(account.client.tokens.access_token)
    assert claims["sub"] == str(account.id)
    assert claims["typ"] == "access"
    assert claims["iss"] == ISSUER
    assert claims["is_admin"] is False
    assert claims["sid"] == account.client.list_sessions()[0].id
    assert claims["exp"] > time.time()


def test_admin_claim(verifier, admin):
    assert verifier.verify(admin.tokens.access_token)["is_admin"] is True


def test_keys_are_cached(verifier, transport, new_account):
    for _ in range(3):
        verifier.verify(new_account().client.tokens.access_token)
    assert transport.counts[JWKS] == 1


def test_cache_expires_after_its_ttl(ums, transport, token):
    with TokenVerifier(ums.url, issuer=ISSUER, cache_ttl=0, transport=transport) as v:
        v.verify(token)
        v.verify(token)
    assert transport.counts[JWKS] == 2


def test_jwks_url_may_be_given_directly(ums, token):
    with TokenVerifier(jwks_url=ums.url + JWKS, issuer=ISSUER) as v:
        assert v.verify(token)["typ"] == "access"


def test_refresh_token_is_refused(verifier, new_account):
    refresh = new_account().client.tokens.refresh_token
    # Refresh tokens are opaque (only UMS reads them): no JWT at all.
    assert refresh.startswith("umsr_")
    with pytest.raises(InvalidToken, match="malformed token"):
        verifier.verify(refresh)


def test_tampered_payload_is_refused(verifier, token):
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    claims["is_admin"] = True
    forged = ".".join([header, b64(json.dumps(claims).encode()), signature])
    with pytest.raises(InvalidToken, match=r"[Ss]ignature"):
        verifier.verify(forged)


def test_tampered_signature_is_refused(verifier, token):
    header, payload, signature = token.split(".")
    raw = bytearray(unb64(signature))
    raw[0] ^= 0x01
    with pytest.raises(InvalidToken):
        verifier.verify(".".join([header, payload, b64(bytes(raw))]))


def test_garbage_is_refused(verifier):
    with pytest.raises(InvalidToken, match="malformed"):
        verifier.verify("not-a-jwt")


def test_alg_none_is_refused(verifier, token):
    header = {"alg": "none", "typ": "JWT", "kid": kid_of(token)}
    unsigned = f"{b64(json.dumps(header).encode())}.{token.split('.')[1]}."
    with pytest.raises(InvalidToken, match="not allowed"):
        verifier.verify(unsigned)


def test_hmac_signed_with_the_public_key_is_refused(verifier, ums, token):
    """The classic algorithm confusion: HS256 keyed with the server's public key."""
    jwk = next(k for k in UMSClient(ums.url).jwks()["keys"] if k["kid"] == kid_of(token))
    public_pem = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}).encode())
    payload = token.split(".")[1]
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken, match="not allowed"):
        verifier.verify(f"{header}.{payload}.{b64(mac)}")


def test_algorithm_must_match_the_key(verifier, token):
    """An EdDSA token naming the server's RSA key is refused before any signature check."""
    forged = jwt.encode(
        claims_of(token),
        ed25519.Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": kid_of(token)},
    )
    with pytest.raises(InvalidToken, match="is for RS256"):
        verifier.verify(forged)


def test_wrong_issuer_is_refused(ums, token):
    with (
        TokenVerifier(ums.url, issuer="http://elsewhere.test") as v,
        pytest.raises(InvalidToken, match=r"[Ii]ssuer"),
    ):
        v.verify(token)


def test_expired_token_is_refused(ums_short, new_account):
    access = new_account(server=ums_short).client.tokens.access_token
    with TokenVerifier(ums_short.url, issuer=ISSUER) as v:
        assert v.verify(access)["typ"] == "access"
        wait_until_expired(ums_short, access)
        with pytest.raises(InvalidToken, match="expired"):
            v.verify(access)


def test_unknown_kid_refetches_at_most_once_per_interval(verifier, transport, token):
    verifier.verify(token)
    assert transport.counts[JWKS] == 1
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for kid in ["forged-1", "forged-2", "forged-3"]:
        forged = jwt.encode(claims_of(token), stranger, algorithm="RS256", headers={"kid": kid})
        with pytest.raises(InvalidToken, match="unknown signing key"):
            verifier.verify(forged)
    assert transport.counts[JWKS] == 2  # one refetch for the first unknown kid only


def test_unreachable_jwks_is_service_unavailable(token):
    with (
        TokenVerifier(f"http://127.0.0.1:{free_port()}", issuer=ISSUER, timeout=2) as v,
        pytest.raises(ServiceUnavailable),
    ):
        v.verify(token)


def test_unsafe_algorithm_lists_are_rejected():
    with pytest.raises(ValueError):
        TokenVerifier("http://ums.test", issuer=ISSUER, algorithms=("HS256",))
    with pytest.raises(ValueError):
        TokenVerifier(issuer=ISSUER)


def test_rotated_key_is_fetched_when_its_kid_is_first_seen(pool):
    """Rotate with ``ums keys rotate`` on a running server's database.

    Server A has been running (and the verifier has cached A's key set). After the rotation,
    server B is started on the same database and signs with the new key. Presenting B's token
    to A makes A reload its keys (UMS reloads on an unknown kid); the verifier, pointed at A,
    then meets the new kid and fetches the JWKS again.
    """
    server_a = pool.start()
    transport = CountingTransport()
    with (
        UMSClient(server_a.url) as on_a,
        TokenVerifier(server_a.url, issuer=ISSUER, transport=transport) as v,
    ):
        on_a.register("rotator", "rotator@example.org", PASSWORD)
        old_token = on_a.login("rotator", PASSWORD).access_token
        assert v.verify(old_token)["typ"] == "access"
        assert transport.counts[JWKS] == 1

        rotated = server_a.cli("keys", "rotate")
        new_kid = rotated.stdout.strip().split()[-1]
        assert new_kid and new_kid != kid_of(old_token)

        server_b = pool.start(data_dir=server_a.data_dir)
        with UMSClient(server_b.url) as on_b:
            new_token = on_b.login("rotator", PASSWORD).access_token
        assert kid_of(new_token) == new_kid

        with UMSClient(server_a.url) as a_with_new_token:
            a_with_new_token.token_store.save(on_b.tokens)
            assert a_with_new_token.me().username == "rotator"
        assert {k["kid"] for k in on_a.jwks()["keys"]} == {kid_of(old_token), new_kid}

        claims = v.verify(new_token)
        assert claims["sub"] == claims_of(old_token)["sub"]
        assert transport.counts[JWKS] == 2  # refetched once, on meeting the new kid
        assert v.verify(old_token)["typ"] == "access"  # the old key still verifies
        assert transport.counts[JWKS] == 2


def test_eddsa_tokens(pool):
    server = pool.named_server("eddsa", UMS_JWT_ALGORITHM="EdDSA")
    with UMSClient(server.url) as client:
        client.register("edwards", "edwards@example.org", PASSWORD)
        access = client.login("edwards", PASSWORD).access_token
    assert jwt.get_unverified_header(access)["alg"] == "EdDSA"
    with TokenVerifier(server.url, issuer=ISSUER) as v:
        assert v.verify(access)["typ"] == "access"
    with (
        TokenVerifier(server.url, issuer=ISSUER, algorithms=("RS256",)) as rsa_only,
        pytest.raises(InvalidToken, match="not allowed"),
    ):
        rsa_only.verify(access)


def test_es256_tokens(pool):
    server = pool.named_server("es256", UMS_JWT_ALGORITHM="ES256")
    with UMSClient(server.url) as client:
        client.register("ecdsa", "ecdsa@example.org", PASSWORD)
        access = client.login("ecdsa", PASSWORD).access_token
    assert jwt.get_unverified_header(access)["alg"] == "ES256"
    with TokenVerifier(server.url, issuer=ISSUER) as v:
        claims = v.verify(access)
        assert claims["typ"] == "access"
        assert claims["amr"] == ["pwd"]
    with (
        TokenVerifier(server.url, issuer=ISSUER, algorithms=("EdDSA",)) as eddsa_only,
        pytest.raises(InvalidToken, match="not allowed"),
    ):
        eddsa_only.verify(access)


# -- the audience (UMS_JWT_AUDIENCE) -------------------------------------------------------


@pytest.fixture(scope="module")
def audience_tokens(audience_servers) -> dict[str | None, str]:
    """Access tokens of one user from the three servers of ``audience_servers``, by audience."""
    portal, billing, plain = audience_servers
    name = unique("aud")
    with UMSClient(portal.url) as client:
        client.register(name, f"{name}@example.org", PASSWORD)
    tokens: dict[str | None, str] = {}
    for audience, server in (("lab-portal", portal), ("billing", billing), (None, plain)):
        with UMSClient(server.url) as client:
            tokens[audience] = client.login(name, PASSWORD).access_token
    return tokens


def test_audience_is_verified_when_configured(audience_servers, audience_tokens):
    token = audience_tokens["lab-portal"]
    assert claims_of(token)["aud"] == "lab-portal"
    with TokenVerifier(audience_servers[0].url, issuer=ISSUER, audience="lab-portal") as v:
        assert v.verify(token)["aud"] == "lab-portal"
        with pytest.raises(InvalidToken, match="audience"):
            v.verify(audience_tokens["billing"])  # well signed, for another service
    with TokenVerifier(
        audience_servers[0].url, issuer=ISSUER, audience=["billing", "lab-portal"]
    ) as either:
        assert either.verify(token)["sub"] == either.verify(audience_tokens["billing"])["sub"]


def test_token_without_audience_is_refused_when_one_is_configured(
    audience_servers, audience_tokens
):
    token = audience_tokens[None]
    assert "aud" not in claims_of(token)
    with (
        TokenVerifier(audience_servers[0].url, issuer=ISSUER, audience="lab-portal") as v,
        pytest.raises(InvalidToken, match='"aud"'),
    ):
        v.verify(token)
    with TokenVerifier(audience_servers[0].url, issuer=ISSUER) as no_audience:
        assert no_audience.verify(token)["typ"] == "access"


def test_token_naming_an_audience_is_refused_when_none_is_configured(
    audience_servers, audience_tokens
):
    """RFC 7519: a recipient that does not identify itself with ``aud`` rejects the token."""
    with (
        TokenVerifier(audience_servers[0].url, issuer=ISSUER) as v,
        pytest.raises(InvalidToken, match="audience"),
    ):
        v.verify(audience_tokens["lab-portal"])


@pytest.mark.parametrize("audience", ["", [], ["lab-portal", ""]])
def test_empty_audience_is_rejected(audience):
    """An empty audience would make PyJWT skip the check altogether."""
    with pytest.raises(ValueError, match="audience"):
        TokenVerifier("http://ums.test", issuer=ISSUER, audience=audience)
