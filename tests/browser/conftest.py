"""A real UMS server and a real browser for the console's tests.

The server is the binary under test on a fresh SQLite database, with fast password hashing
and the rate limits out of the way. The browser is headless Chromium from Debian's package,
at $UMS_TEST_CHROMIUM, started by Playwright with the flags a machine without an internet
connection needs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, sync_playwright

from ums_client import UMSClient

ADMIN = ("root", "root@admins.example.org", "Root-Pass-Phrase-2026")
PASSWORD = "Correct-Horse-Battery-7"
ARTIFACTS = Path(os.environ.get("UMS_BROWSER_ARTIFACTS", "browser-artifacts"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The binary under test. `host` is how the browser names it: passkeys need a secure
    origin, and of plain http only localhost's is one (WebAuthn takes no IP address)."""

    def __init__(self, host: str = "127.0.0.1", **env: str) -> None:
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.data = tempfile.TemporaryDirectory(prefix="ums-browser-")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("UMS_")},
            "UMS_BIND": f"127.0.0.1:{self.port}",
            "UMS_DATABASE_URL": f"sqlite://{self.data.name}/ums.db",
            "UMS_PUBLIC_URL": self.url,
            "UMS_PASSWORD_HASH_MEMORY_KIB": "64",
            "UMS_PASSWORD_HASH_ITERATIONS": "1",
            "UMS_BOOTSTRAP_ADMIN_USERNAME": ADMIN[0],
            "UMS_BOOTSTRAP_ADMIN_EMAIL": ADMIN[1],
            "UMS_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[2],
            "UMS_REQUIRE_MFA_FOR_ADMINS": "false",
            "UMS_ANON_RATE_LIMIT_PER_MINUTE": "100000",
            "UMS_RATE_LIMIT_PER_MINUTE": "100000",
            "UMS_SESSION_RATE_PER_SECOND": "100000",
            "UMS_IP_BLOCK_THRESHOLD": "100000",
            "UMS_ACCOUNT_REQUESTS_PER_HOUR": "100000",
            "UMS_LOGIN_DELAYS": "none",
            "UMS_LOG_FORMAT": "json",
            **env,
        }
        self.log = open(Path(self.data.name) / "server.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [os.environ["UMS_BIN"], "serve"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the UMS server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self.log.close()
        self.data.cleanup()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    started = Server()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=os.environ["UMS_TEST_CHROMIUM"],
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    opened = context.new_page()
    yield opened
    context.close()


class Person:
    """A registered account, and a client signed in as it through the API."""

    def __init__(self, server: Server) -> None:
        self.username = f"u{uuid.uuid4().hex[:10]}"
        self.email = f"{self.username}@lab.example.org"
        self.password = PASSWORD
        self.client = UMSClient(server.url)
        self.id = self.client.register(self.username, self.email, PASSWORD).id
        self.client.login(self.username, PASSWORD)


@pytest.fixture
def person(server: Server) -> Person:
    return Person(server)


@pytest.fixture
def admin_client(server: Server) -> Iterator[UMSClient]:
    client = UMSClient(server.url)
    client.login(ADMIN[0], ADMIN[2])
    yield client


class App:
    """An authenticator app: the code of the first 30-second step not used yet."""

    def __init__(self, uri: str) -> None:
        totp = pyotp.parse_uri(uri)
        assert isinstance(totp, pyotp.TOTP)
        self.totp = totp
        self.last_step = -1

    @classmethod
    def from_secret(cls, secret: str) -> App:
        """The app, set up by typing the key shown instead of scanning the QR code."""
        return cls(pyotp.TOTP(secret).provisioning_uri(name="typed", issuer_name="UMS"))

    def code(self) -> str:
        now = int(time.time()) // 30
        step = max(self.last_step + 1, now)
        if step > now + 1:
            time.sleep((step - 1) * 30 - time.time() + 0.2)
        self.last_step = step
        return self.totp.at(step * 30)


def sign_in(page: Page, server: Server, username: str, password: str, path: str = "/account") -> None:
    page.goto(f"{server.url}{path}")
    page.get_by_label("Username or email").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def add_virtual_authenticator(page: Page) -> None:
    """A platform authenticator with user verification, inside Chromium (its DevTools
    protocol's WebAuthn domain): it creates and uses passkeys as a phone or laptop would."""
    devtools = page.context.new_cdp_session(page)
    devtools.send("WebAuthn.enable")
    devtools.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )


def snapshot(page: Page, name: str) -> None:
    """A full-page screenshot, kept as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


AXE = Axe()


def assert_accessible(page: Page) -> None:
    """axe-core finds no serious or critical violation on the page."""
    results = AXE.run(page)
    grave = [
        f"{violation['id']} ({violation['impact']}): {violation['help']}"
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]
    assert not grave, grave
