"""Runs the real UMS binary for the tests, and configures a tiny Django project.

The binary is ``$UMS_BIN``, else ``target/debug/ums`` of the repository (as CI builds it).
Each server gets a free port, a fresh SQLite database in a temp dir and fast password hashing.
Tests isolate themselves with unique usernames and lab codes.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import pyotp
import pytest
from django.conf import settings

from ums_client import MemoryTokenStore, TokenPair, UMSClient, User, VerificationRequired

REPO_ROOT = Path(__file__).resolve().parents[3]
ADMIN_USERNAME = "root"
ADMIN_EMAIL = "root@lab.org"
ADMIN_PASSWORD = "correct horse battery staple"
ISSUER = "http://ums.test"
PASSWORD = "Zx9!kq-trellis-44"

settings.configure(
    SECRET_KEY="ums-client-tests",
    DEBUG=False,
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF="portal.urls",
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "ums_client.django",
    ],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ums_client.django.middleware.UMSTokenMiddleware",
        "ums_client.django.middleware.UMSDeviceMiddleware",
    ],
    AUTHENTICATION_BACKENDS=["ums_client.django.backends.UMSBackend"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    SESSION_ENGINE="django.contrib.sessions.backends.db",
    LOGIN_URL="/login/",
    LOGIN_REDIRECT_URL="/whoami/",
    USE_TZ=True,
    UMS_BASE_URL="http://127.0.0.1:9",  # each Django test points it at its server
    UMS_TIMEOUT=10.0,
    UMS_ADMIN_CACHE_TTL=0,  # admin checks ask UMS every time (the cache has its own test)
)
django.setup()


def unique(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ums_binary() -> Path:
    path = Path(os.environ.get("UMS_BIN") or REPO_ROOT / "target" / "debug" / "ums")
    if not path.is_file():
        pytest.exit(
            f"UMS server binary not found at {path}: build it (cargo build) or set UMS_BIN", 2
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UMSServer:
    """One ``ums serve`` process; several may share a database directory."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"ums-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("UMS_")},
            "UMS_BIND": f"127.0.0.1:{self.port}",
            "UMS_DATABASE_URL": f"sqlite://{data_dir}/ums.db",
            "UMS_PASSWORD_HASH_MEMORY_KIB": "64",
            "UMS_PASSWORD_HASH_ITERATIONS": "1",
            "UMS_PUBLIC_URL": ISSUER,
            "UMS_ACCESS_TOKEN_TTL": "1h",
            "UMS_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USERNAME,
            "UMS_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "UMS_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # All requests come from 127.0.0.1: keep the per-IP and per-session limits out of
            # the way of tests that are not about them.
            "UMS_ANON_RATE_LIMIT_PER_MINUTE": "100000",
            "UMS_RATE_LIMIT_PER_MINUTE": "100000",
            "UMS_SESSION_RATE_PER_SECOND": "100000",
            "UMS_IP_BLOCK_THRESHOLD": "100000",
            "UMS_ACCOUNT_REQUESTS_PER_HOUR": "100000",  # registrations and resets per IP
            "UMS_LOGIN_DELAYS": "none",
            "UMS_LOG_FORMAT": "json",
            # The tests sign the bootstrap admin in with the password alone; the server's
            # default would answer that 401 mfa_enrollment_required. The policy has its own
            # test (test_mfa.py), on a server started with it on.
            "UMS_REQUIRE_MFA_FOR_ADMINS": "false",
            **env,
        }

    def start(self) -> UMSServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(ums_binary()), "serve"],
            env=self.env,
            cwd=self.data_dir,  # no stray .env is read
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ums exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ums did not become healthy within 30 s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``ums`` command with this server's configuration (same database)."""
        return subprocess.run(
            [str(ums_binary()), *args],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def mails(self) -> list[dict[str, str]]:
        """Emails the server wrote to its log (no SMTP is configured): to, subject, body."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            # The server writes flat JSON lines (fields beside "message"); older builds nested them.
            fields = record.get("fields", record)
            if {"to", "subject", "body"} <= fields.keys():
                found.append({k: fields[k] for k in ("to", "subject", "body")})
        return found

    def wait_for_mail(self, to: str, subject: str, timeout: float = 15) -> dict[str, str]:
        """The newest mail to ``to`` whose subject contains ``subject`` (mail is queued)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mail in reversed(self.mails()):
                if mail["to"] == to and subject in mail["subject"]:
                    return mail
            time.sleep(0.1)
        pytest.fail(f"no mail {subject!r} to {to} within {timeout} s")

    def count_mails(self, to: str, subject: str) -> int:
        """How many mails to ``to`` whose subject contains ``subject`` were written so far."""
        return sum(1 for m in self.mails() if m["to"] == to and subject in m["subject"])

    def wait_for_new_mail(
        self, to: str, subject: str, seen: int, timeout: float = 15
    ) -> dict[str, str]:
        """The first such mail after the ``seen`` ones (:meth:`count_mails` before the call
        that sends it): with several mails of a kind, the newest may be an old one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.mails() if m["to"] == to and subject in m["subject"]]
            if len(found) > seen:
                return found[seen]
            time.sleep(0.1)
        pytest.fail(f"no new mail {subject!r} to {to} within {timeout} s")

    def wait_for_token(self, to: str, subject: str) -> str:
        """The ``token=`` of the link in such a mail."""
        mail = self.wait_for_mail(to, subject)
        match = re.search(r"[?&]token=([A-Za-z0-9_-]+)", mail["body"])
        assert match, f"no token in {mail}"
        return match.group(1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ServerPool:
    """Starts servers on demand and stops them all at the end of the run."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ums-client-tests-"))
        self.servers: list[UMSServer] = []
        self.named: dict[str, UMSServer] = {}

    def new_dir(self) -> Path:
        path = self.root / uuid.uuid4().hex[:8]
        path.mkdir()
        return path

    def start(self, data_dir: Path | None = None, **env: str) -> UMSServer:
        server = UMSServer(data_dir or self.new_dir(), **env)
        self.servers.append(server)
        return server.start()

    def named_server(self, name: str, **env: str) -> UMSServer:
        if name not in self.named:
            self.named[name] = self.start(**env)
        return self.named[name]

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
        if os.environ.get("UMS_KEEP_TEST_DATA"):
            print(f"UMS test data kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


POOL = ServerPool()


def pytest_unconfigure(config: pytest.Config) -> None:
    POOL.stop_all()


def main_server() -> UMSServer:
    """The shared server (access tokens live 1 h); started on first use."""
    return POOL.named_server("main")


_ROUTE_PROBES: dict[tuple[str, str], bool] = {}


def route_served(method: str, path: str) -> bool:
    """Whether the server serves a route: an unauthenticated empty call is not answered 404.

    Used in ``skipif`` conditions for routes of the contract that the server does not have yet.
    """
    key = (method, path)
    if key not in _ROUTE_PROBES:
        response = httpx.request(method, main_server().url + path, json={}, timeout=10)
        _ROUTE_PROBES[key] = response.status_code != 404
    return _ROUTE_PROBES[key]


def wait_until_expired(server: UMSServer, access_token: str, timeout: float = 20) -> None:
    """Poll until the server refuses ``access_token`` (it has expired)."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {access_token}"}
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/api/auth/me", headers=headers).status_code == 401:
            return
        time.sleep(0.2)
    pytest.fail(f"access token still accepted after {timeout} s")


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests sent through it, by path."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.counts[request.url.path] += 1
        return super().handle_request(request)


class AuthenticatorApp:
    """An authenticator app holding a TOTP secret (from the ``otpauth://`` URI it scans).

    UMS accepts a code for the current 30-second step or the one either side, and each step
    once per user, later than any used before. So each :meth:`code` is for the first step
    not used yet: the current one, else the next (accepted early). Only a third code within
    one step has to wait for the next step; tests keep to two codes per user where they can.
    """

    def __init__(self, totp: pyotp.TOTP) -> None:
        self.totp = totp
        self.last_step = -1

    @classmethod
    def scan(cls, otpauth_uri: str) -> AuthenticatorApp:
        totp = pyotp.parse_uri(otpauth_uri)
        assert isinstance(totp, pyotp.TOTP)
        return cls(totp)

    def code(self) -> str:
        now = int(time.time()) // 30
        step = max(self.last_step + 1, now)
        if step > now + 1:  # both usable steps are spent: wait for the next one
            time.sleep((step - 1) * 30 - time.time() + 0.2)
        self.last_step = step
        return self.totp.at(step * 30)

    def wrong_code(self) -> str:
        """Six digits that are no code of any step UMS could accept now."""
        now = int(time.time()) // 30
        valid = {self.totp.at((now + delta) * 30) for delta in range(-2, 3)}
        return next(
            c
            for c in ("000000", "111111", "222222", "333333", "444444", "555555")
            if c not in valid
        )


def enrol_totp(client: UMSClient) -> tuple[AuthenticatorApp, list[str]]:
    """Enrol and confirm an authenticator app for the client's user, through the client.

    Returns the app (its first code is spent) and the recovery codes (empty unless it was the
    account's first factor).
    """
    app = AuthenticatorApp.scan(client.enroll_totp().otpauth_uri)
    enrolled = client.confirm_totp(app.code())
    return app, list(enrolled.recovery_codes or ())


# -- adaptive sign-in ---------------------------------------------------------------------

SIGN_IN_CODE_SUBJECT = "Your sign-in code"
#: Client addresses (through a trusted proxy's X-Forwarded-For) on the ``geo`` server: in
#: Paris, in Tokyo, and on its denylist.
PARIS, TOKYO, LISTED = "81.1.2.3", "126.4.5.6", "203.0.113.9"


def sign_in_code(mail: dict[str, str]) -> str:
    """The six-digit code of a "Your sign-in code" mail: alone on its line."""
    match = re.search(r"^\s*([0-9]{6})\s*$", mail["body"], re.MULTILINE)
    assert match, f"no code in {mail}"
    return match.group(1)


def not_the_code(code: str) -> str:
    """Six digits that are not ``code``."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


def new_device() -> str:
    """A device id, as a portal forwards one for a browser."""
    return f"device-{uuid.uuid4().hex}"


def registered(
    server: UMSServer, make_client: Callable[..., UMSClient], **kwargs: Any
) -> tuple[UMSClient, str, str]:
    """A new account signed in once (its first sign-in: no history, no risk) by a client
    made with ``kwargs``; returns that client, the username and the email."""
    client = make_client(server, **kwargs)
    username = unique()
    email = f"{username}@example.org"
    client.register(username, email, PASSWORD)
    client.login(username, PASSWORD)
    return client, username, email


def verification_step(
    server: UMSServer, client: UMSClient, username: str, email: str
) -> tuple[VerificationRequired, str]:
    """A sign-in that UMS confirms by email: its VerificationRequired and the emailed code."""
    seen = server.count_mails(email, SIGN_IN_CODE_SUBJECT)
    with pytest.raises(VerificationRequired) as excinfo:
        client.login(username, PASSWORD)
    return excinfo.value, sign_in_code(server.wait_for_new_mail(email, SIGN_IN_CODE_SUBJECT, seen))


def write_geoip_database(path: Path) -> None:
    """A GeoLite2-City-shaped MaxMind database: 81.0.0.0/8 in Paris, 126.0.0.0/8 in Tokyo."""
    mmdb_writer = pytest.importorskip("mmdb_writer")
    from netaddr import IPSet  # a dependency of mmdb-writer

    def city(name: str, code: str, country: str, at: tuple[float, float]) -> dict[str, Any]:
        return {
            "city": {"names": {"en": name}},
            "country": {"iso_code": code, "names": {"en": country}},
            "location": {
                "latitude": mmdb_writer.MmdbF64(at[0]),
                "longitude": mmdb_writer.MmdbF64(at[1]),
                "accuracy_radius": mmdb_writer.MmdbU16(20),
            },
        }

    writer = mmdb_writer.MMDBWriter(
        ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True
    )
    writer.insert_network(IPSet(["81.0.0.0/8"]), city("Paris", "FR", "France", (48.8566, 2.3522)))
    writer.insert_network(IPSet(["126.0.0.0/8"]), city("Tokyo", "JP", "Japan", (35.6762, 139.6503)))
    writer.to_db_file(str(path))


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ums() -> UMSServer:
    return main_server()


@pytest.fixture(scope="session")
def ums_short() -> UMSServer:
    """A second server, with its own database, whose access tokens live 2 seconds."""
    return POOL.named_server("short", UMS_ACCESS_TOKEN_TTL="2s")


@pytest.fixture(scope="session")
def risky() -> UMSServer:
    """A server, with its own database, on which a new device alone makes a sign-in risky
    enough for an emailed code (weight 60, over 50); an account's first sign-in has no
    history and passes. Its mail goes out every 100 ms (codes are waited for)."""
    return POOL.named_server(
        "risky", UMS_RISK_WEIGHT_NEW_DEVICE="60", UMS_MAIL_POLL_INTERVAL="100ms"
    )


@pytest.fixture(scope="session")
def geo() -> UMSServer:
    """A server, with its own database and default risk weights, that knows places (Paris,
    Tokyo: :func:`write_geoip_database`) and a denylist (203.0.113.0/24), and takes client
    addresses from ``X-Forwarded-For`` (127.0.0.1 is a trusted proxy)."""
    data_dir = POOL.new_dir()
    write_geoip_database(data_dir / "city.mmdb")
    (data_dir / "drop.txt").write_text("; Spamhaus DROP\n203.0.113.0/24 ; SBL1\n")
    return POOL.start(
        data_dir,
        UMS_GEOIP_DB=str(data_dir / "city.mmdb"),
        UMS_IP_DENYLIST=str(data_dir / "drop.txt"),
        UMS_TRUSTED_PROXIES="127.0.0.1",
        UMS_MAIL_POLL_INTERVAL="100ms",
    )


#: The terms of service and privacy notice versions the ``consenting`` server asks for, and
#: the newer terms of service of ``renewed_terms``.
TERMS, PRIVACY, NEW_TERMS = "2026-01", "3", "2026-06"


@pytest.fixture(scope="session")
def consenting() -> UMSServer:
    """A server, with its own database, that asks for consent (``UMS_TERMS_VERSION``
    :data:`TERMS`, ``UMS_PRIVACY_VERSION`` :data:`PRIVACY`): a registration must accept both."""
    return POOL.named_server("consenting", UMS_TERMS_VERSION=TERMS, UMS_PRIVACY_VERSION=PRIVACY)


@pytest.fixture(scope="session")
def renewed_terms(consenting: UMSServer) -> UMSServer:
    """A second instance on the database of ``consenting`` whose terms of service are newer
    (:data:`NEW_TERMS`): an account that accepted only :data:`TERMS` is asked again."""
    return POOL.start(consenting.data_dir, UMS_TERMS_VERSION=NEW_TERMS, UMS_PRIVACY_VERSION=PRIVACY)


@pytest.fixture(scope="session")
def audience_servers() -> tuple[UMSServer, UMSServer, UMSServer]:
    """Three servers sharing one database and signing keys, differing in ``UMS_JWT_AUDIENCE``.

    ``lab-portal``, ``billing`` and none: a token of one is well signed for all three, so only
    the audience check tells them apart.
    """
    portal = POOL.start(UMS_JWT_AUDIENCE="lab-portal")
    billing = POOL.start(data_dir=portal.data_dir, UMS_JWT_AUDIENCE="billing")
    plain = POOL.start(data_dir=portal.data_dir)
    return portal, billing, plain


@pytest.fixture(scope="session")
def pool() -> ServerPool:
    return POOL


@pytest.fixture
def make_client() -> Iterator[Callable[..., UMSClient]]:
    """``make_client(server, tokens=None, **kwargs)``: a client closed after the test."""
    clients: list[UMSClient] = []

    def make(server: UMSServer, tokens: TokenPair | None = None, **kwargs: object) -> UMSClient:
        client = UMSClient(server.url, token_store=MemoryTokenStore(tokens), **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def admin_of(make_client: Callable[..., UMSClient]) -> Callable[[UMSServer], UMSClient]:
    """``admin_of(server)``: the bootstrap admin, logged in to that server."""

    def make(server: UMSServer) -> UMSClient:
        client = make_client(server)
        client.login(ADMIN_USERNAME, ADMIN_PASSWORD)
        return client

    return make


@pytest.fixture(scope="session")
def admin(ums: UMSServer) -> Iterator[UMSClient]:
    """The bootstrap admin, logged in to the main server."""
    with UMSClient(ums.url) as client:
        client.login(ADMIN_USERNAME, ADMIN_PASSWORD)
        yield client


class Account:
    def __init__(self, user: User, password: str, client: UMSClient) -> None:
        self.user = user
        self.password = password
        self.client = client

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def username(self) -> str:
        return self.user.username


@pytest.fixture
def new_account(make_client: Callable[..., UMSClient]) -> Callable[..., Account]:
    """``new_account(server=main, login=True, **names)``: a fresh registered user."""

    def make(server: UMSServer | None = None, login: bool = True, **names: str) -> Account:
        server = server or main_server()
        client = make_client(server)
        username = unique()
        user = client.register(username, f"{username}@Example.ORG", PASSWORD, **names)
        if login:
            client.login(username, PASSWORD)
        return Account(user, PASSWORD, client)

    return make
