"""The production topology on loopback, built from Debian's packages by this test:

- a PostgreSQL primary and a streaming replica (initdb, pg_basebackup -R),
- Redis, an SMTP receiver, three `ums serve` instances started from deploy/systemd/ums.service,
- nginx running deploy/nginx/ums.conf in front of them.

Clients register, sign in, refresh, read themselves and list users through nginx while one
instance is killed (SIGKILL), brought back, and another restarted the way a rolling restart
does it (out of nginx's rotation, SIGTERM, back). Then: no request failed except those in
flight on the killed instance, no acknowledged write is missing, every registered address got
its email once (one Message-ID), the audit chain verifies, and the replica served reads
without ever hiding a client's own write. Last, the replica is stopped: reads go to the
primary and /ready says so, and come back to the replica when it returns.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ums_client.transport import ResendingTransport

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Zx9!kq-trellis-44"
ADMIN = ("root", "root@lab.org", "correct horse battery staple")
SECRET_KEY = "topology-test-secret-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ums_binary() -> Path:
    path = Path(os.environ.get("UMS_BIN") or REPO / "target" / "debug" / "ums")
    if not path.is_file():
        pytest.exit(f"no UMS binary at {path}: cargo build first, or set UMS_BIN", 2)
    return path


def wait_until(check, what: str, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- PostgreSQL ------------------------------------------------------------------------------


def pg_bindir() -> Path:
    try:
        return Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
    except (OSError, subprocess.CalledProcessError):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not found:
            pytest.exit("PostgreSQL's server binaries are not installed", 2)
        return found[-1]


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL's tools refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class PostgresServer:
    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.port = free_port()
        self.log = root / f"{name}.log"
        self.bin = pg_bindir()

    def url(self, database: str = "ums") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _own(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir.parent, "postgres")
            for path in (self.dir, self.log):
                if path.exists():
                    shutil.chown(path, "postgres")

    def init_primary(self) -> PostgresServer:
        self._own()
        subprocess.run(
            as_postgres([str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                         "--auth=trust", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )
        with (self.dir / "postgresql.conf").open("a") as conf:
            conf.write(self._settings() + "wal_level = replica\nmax_wal_senders = 4\n")
        with (self.dir / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        return self

    def init_replica_of(self, primary: PostgresServer) -> PostgresServer:
        self._own()
        subprocess.run(
            as_postgres([str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p",
                         str(primary.port), "-U", "postgres", "-D", str(self.dir), "-R",
                         "-X", "stream", "--no-sync"]),
            check=True, capture_output=True,
        )
        with (self.dir / "postgresql.conf").open("a") as conf:
            conf.write(self._settings() + "hot_standby = on\n")
        return self

    def _settings(self) -> str:
        return (f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir.parent}'\nfsync = on\n"
                "max_connections = 200\nshared_buffers = 64MB\n")

    def start(self) -> None:
        self._own()
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l", str(self.log),
                         "-w", "-t", "60", "start"]),
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", mode, "-w", "stop"]),
            capture_output=True,
        )

    def sql(self, query: str, database: str = "ums") -> str:
        return subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
             "-XAtc", query],
            check=True, capture_output=True, text=True,
        ).stdout.strip()


# --- SMTP receiver ---------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[email.message.EmailMessage] = []

    def add(self, raw: bytes) -> None:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)

    def to(self, address: str) -> list[email.message.EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]


class SmtpHandler(socketserver.StreamRequestHandler):
    """Enough of RFC 5321 for lettre: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self.reply("220 topology-test ESMTP")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line.decode(errors="replace").strip().split(" ")[0].upper()
            if verb == "EHLO":
                self.reply("250-topology-test")
                self.reply("250 8BITMIME")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 go on")
                lines = []
                while True:
                    data = self.rfile.readline()
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.server.mailbox.add(b"".join(lines))  # type: ignore[attr-defined]
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SmtpHandler)
        self.mailbox = Mailbox()
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


# --- the systemd unit and the UMS instances --------------------------------------------------


@dataclass
class Unit:
    command: list[str]
    environment: dict[str, str]
    stop_signal: int
    stop_timeout: float


def read_unit(path: Path) -> Unit:
    service: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            service.setdefault(key, []).append(value)
    environment = {}
    for assignment in service.get("Environment", []):
        name, _, value = assignment.partition("=")
        environment[name] = value
    return Unit(
        command=shlex.split(service["ExecStart"][0]),
        environment=environment,
        stop_signal=getattr(signal, service["KillSignal"][0]),
        stop_timeout=float(service["TimeoutStopSec"][0]),
    )


def base_settings(smtp: SmtpServer) -> dict[str, str]:
    """What every test server's /etc/ums/ums.env holds: its mail to the test's receiver, the
    bootstrap admin, a secret key, fast password hashing."""
    return {
        "UMS_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}",
        "UMS_MAIL_POLL_INTERVAL": "100ms",
        "UMS_SECRET_KEY": SECRET_KEY,
        "UMS_PUBLIC_URL": "http://ums.test",
        "UMS_PASSWORD_HASH_MEMORY_KIB": "64",
        "UMS_PASSWORD_HASH_ITERATIONS": "1",
        "UMS_BOOTSTRAP_ADMIN_USERNAME": ADMIN[0],
        "UMS_BOOTSTRAP_ADMIN_EMAIL": ADMIN[1],
        "UMS_BOOTSTRAP_ADMIN_PASSWORD": ADMIN[2],
        "UMS_REQUIRE_MFA_FOR_ADMINS": "false",
    }


def service_environment(unit: Unit, settings: dict[str, str], port: int) -> dict[str, str]:
    """What the unit sets, then what /etc/ums/ums.env would (EnvironmentFile overrides)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("UMS_")},
            **unit.environment, **settings, "UMS_BIND": f"127.0.0.1:{port}"}


class Instance:
    def __init__(self, root: Path, unit: Unit, port: int, settings: dict[str, str]) -> None:
        self.unit, self.port, self.root = unit, port, root
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / f"ums-{port}.log"
        self.env = service_environment(unit, settings, port)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Instance:
        command = [str(ums_binary()), *self.unit.command[1:]]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, cwd=self.root, stdout=log,
                                            stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process.poll() is None, f"ums exited:\n{self.tail()}"
            try:
                return httpx.get(f"{self.url}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, f"ums on port {self.port}")
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """Stops it as systemd would; its exit code."""
        assert self.process is not None
        self.process.send_signal(self.unit.stop_signal)
        return self.process.wait(timeout=self.unit.stop_timeout)

    def metric(self, series: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# --- nginx -----------------------------------------------------------------------------------


class Nginx:
    def __init__(self, root: Path, upstreams: list[int]) -> None:
        self.root = root / "nginx"
        self.root.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstreams = upstreams
        self.site = (REPO / "deploy" / "nginx" / "ums.conf").read_text()
        self.write_site(down=set())
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(f"    {kind}_temp_path {self.root}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.root / "nginx.conf").write_text(
            f"{user}worker_processes 2;\npid {self.root}/nginx.pid;\n"
            f"error_log {self.root}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log off;\n{temp}    include {self.root}/site.conf;\n}}\n")

    def write_site(self, down: set[int]) -> None:
        servers = "".join(
            f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s{' down' if port in down else ''};\n"
            for port in self.upstreams)
        site, replaced = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ [^\n]*\n", "", self.site)
        assert replaced == 3, "the site file's upstream block changed shape"
        site = site.replace("    keepalive 64;", servers + "    keepalive 64;")
        site, listens = re.subn(r"(?m)^    listen 80;", f"    listen 127.0.0.1:{self.port};", site)
        assert listens == 1
        (self.root / "site.conf").write_text(site)

    def command(self, *extra: str) -> list[str]:
        return ["nginx", "-p", str(self.root), "-c", str(self.root / "nginx.conf"), *extra]

    def start(self) -> None:
        subprocess.run(self.command("-t"), check=True, capture_output=True)
        self.process = subprocess.Popen(self.command("-g", "daemon off;"))
        wait_until(lambda: self._up(), "nginx")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def reload(self, down: set[int]) -> None:
        self.write_site(down)
        subprocess.run(self.command("-s", "reload"), check=True, capture_output=True)
        time.sleep(0.5)  # the new workers take over; the old ones finish what they hold

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- the load --------------------------------------------------------------------------------


@dataclass
class Call:
    what: str
    started: float
    ended: float
    ok: bool
    detail: str = ""


class Client(threading.Thread):
    """One portal user after another: register, sign in, refresh, /me; an admin lists the new
    user at once (a read that may go to the replica, and must see the write)."""

    def __init__(self, base: str, admin_token: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base, self.admin_token, self.stop = base, admin_token, stop
        self.calls: list[Call] = []
        self.registered: list[str] = []  # usernames acknowledged with 201
        self.stale_reads: list[str] = []
        self.transport = ResendingTransport()

    def call(self, http: httpx.Client, what: str, method: str, path: str, expect: int,
             **kwargs) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as error:
            self.calls.append(Call(what, started, time.monotonic(), False, repr(error)))
            return None
        ok = response.status_code == expect
        self.calls.append(Call(what, started, time.monotonic(), ok,
                               "" if ok else f"{response.status_code} {response.text[:200]}"))
        return response if ok else None

    def run(self) -> None:
        # As a browser or the portal's client does: a request met by nginx closing the
        # kept-alive connection (each reload does, for the rolling restart) is sent again.
        with httpx.Client(timeout=30, transport=self.transport) as http:
            while not self.stop.is_set():
                self.one_user(http)

    def one_user(self, http: httpx.Client) -> None:
        name = f"t{uuid.uuid4().hex[:12]}"
        registered = self.call(http, "register", "POST", "/api/auth/register", 201, json={
            "username": name, "email": f"{name}@lab.org", "password": PASSWORD})
        if registered is None:
            return
        self.registered.append(name)
        listed = self.call(http, "list", "GET", f"/api/users?q={name}", 200,
                           headers={"Authorization": f"Bearer {self.admin_token}"})
        if listed is not None and [u["username"] for u in listed.json()["items"]] != [name]:
            self.stale_reads.append(name)
        tokens = self.call(http, "login", "POST", "/api/auth/login", 200,
                           json={"username": name, "password": PASSWORD})
        if tokens is None:
            return
        refresh = tokens.json()["refresh_token"]
        for _ in range(3):
            rotated = self.call(http, "refresh", "POST", "/api/auth/refresh", 200,
                                json={"refresh_token": refresh})
            if rotated is None:
                return
            refresh, access = rotated.json()["refresh_token"], rotated.json()["access_token"]
            if self.call(http, "me", "GET", "/api/auth/me", 200,
                         headers={"Authorization": f"Bearer {access}"}) is None:
                return


# --- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ums-topology-"))
    os.chmod(path, 0o755)
    yield path
    if os.environ.get("UMS_TOPOLOGY_KEEP"):
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def test_topology(root: Path) -> None:
    for tool in ("nginx", "redis-server", "psql", "pg_config"):
        if shutil.which(tool) is None:
            pytest.exit(f"{tool} is not installed (apt-get install nginx-light redis-server "
                        "postgresql)", 2)
    cleanups = []
    try:
        run_topology(root, cleanups)
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as error:  # noqa: BLE001 - tear down the rest regardless
                print(f"cleanup failed: {error!r}")


def run_topology(root: Path, cleanups: list) -> None:
    pg_root = root / "pg"
    pg_root.mkdir()
    os.chmod(pg_root, 0o755)
    primary = PostgresServer(pg_root, "primary").init_primary()
    primary.start()
    cleanups.append(lambda: primary.stop("immediate"))
    primary.sql("CREATE DATABASE ums", database="postgres")
    replica = PostgresServer(pg_root, "replica").init_replica_of(primary)
    replica.start()
    cleanups.append(lambda: replica.stop("immediate"))
    wait_until(lambda: replica.sql("SELECT pg_is_in_recovery()") == "t", "the replica")

    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    cleanups.append(lambda: (redis.terminate(), redis.wait(10)))
    smtp = SmtpServer()
    cleanups.append(smtp.shutdown)

    unit = read_unit(REPO / "deploy" / "systemd" / "ums.service")
    assert unit.command[1:] == ["serve"], unit.command
    assert unit.stop_signal == signal.SIGTERM and unit.stop_timeout > 10
    settings = {
        **base_settings(smtp),
        "UMS_DATABASE_URL": primary.url(),
        "UMS_DATABASE_REPLICA_URL": replica.url(),
        "UMS_REDIS_URL": f"redis://127.0.0.1:{redis_port}",
        "UMS_TRUSTED_PROXIES": "127.0.0.1",
        # One client address (nginx's, forwarded as 127.0.0.1) makes every request: the
        # per-address defences would stop the load itself.
        "UMS_ANON_RATE_LIMIT_PER_MINUTE": "1000000",
        "UMS_RATE_LIMIT_PER_MINUTE": "1000000",
        "UMS_SESSION_RATE_PER_SECOND": "1000000",
        "UMS_IP_BLOCK_THRESHOLD": "1000000",
        "UMS_STUFFING_THRESHOLD": "1000000",
        "UMS_ACCOUNT_REQUESTS_PER_HOUR": "1000000",
        "UMS_LOGIN_DELAYS": "none",
    }
    ports = [free_port() for _ in range(3)]
    # The first runs the migrations alone; the others start on the migrated database.
    instances = [Instance(root, unit, port, settings) for port in ports]
    for instance in instances:
        instance.start()
        cleanups.append(lambda instance=instance: instance.process.poll() is None
                        and instance.kill())
    nginx = Nginx(root, ports)
    nginx.start()
    cleanups.append(nginx.stop)

    signed_in = httpx.post(f"{nginx.url}/api/auth/login",
                           json={"username": ADMIN[0], "password": ADMIN[2]}, timeout=10)
    assert signed_in.status_code == 200, signed_in.text
    admin_token = signed_in.json()["access_token"]

    stop = threading.Event()
    clients = [Client(nginx.url, admin_token, stop) for _ in range(6)]
    for client in clients:
        client.start()

    time.sleep(3)
    victim, restarted = instances[1], instances[2]
    kill_started = time.monotonic()
    victim.kill()
    killed_at = time.monotonic()
    time.sleep(2)
    victim.start()  # systemd's Restart=on-failure
    time.sleep(2)

    # The rolling restart: out of the rotation, SIGTERM, back in.
    nginx.reload(down={restarted.port})
    exit_code = restarted.stop()
    assert exit_code == 0, f"SIGTERM ended ums with {exit_code}:\n{restarted.tail()}"
    restarted.start()
    nginx.reload(down=set())
    time.sleep(3)
    stop.set()
    for client in clients:
        client.join(60)

    calls = [call for client in clients for call in client.calls]
    failed = [call for call in calls if not call.ok]
    # Failed: only what was in flight on the killed instance when it died.
    in_flight_at_kill = [c for c in failed if c.started <= killed_at and c.ended >= kill_started]
    assert failed == in_flight_at_kill, "\n".join(
        f"{c.what} at +{c.started - kill_started:.3f} s: {c.detail}" for c in failed)
    assert len(failed) <= len(clients)
    succeeded = [call for call in calls if call.ok]
    assert len(succeeded) > 200, f"only {len(succeeded)} requests succeeded"
    for kind in ("register", "list", "login", "refresh", "me"):
        assert any(c.what == kind for c in succeeded), kind

    # No acknowledged write lost; and a client always saw its own write.
    acknowledged = {name for client in clients for name in client.registered}
    stored = set(primary.sql("SELECT username FROM users WHERE username LIKE 't%'").split())
    assert acknowledged <= stored, acknowledged - stored
    assert not [name for client in clients for name in client.stale_reads]

    # Every stored account got its one welcome email: the killed instance's claims go to the
    # others when their lease ends; a copy sent twice would carry the same Message-ID.
    def delivered() -> bool:
        return all(smtp.mailbox.to(f"{name}@lab.org") for name in stored)

    wait_until(delivered, "every welcome email", timeout=60, interval=0.5)
    wait_until(lambda: primary.sql("SELECT count(*) FROM email_outbox WHERE status <> 'sent'")
               == "0", "an empty outbox", timeout=60, interval=0.5)
    duplicates = 0
    for name in stored:
        mails = smtp.mailbox.to(f"{name}@lab.org")
        assert any("Welcome" in str(m["Subject"]) for m in mails), name
        # Each user registered once and signed in once: one message of each subject.
        by_subject: dict[str, set[str]] = {}
        for mail in mails:
            by_subject.setdefault(str(mail["Subject"]), set()).add(str(mail["Message-ID"]))
        assert all(len(ids) == 1 for ids in by_subject.values()), (name, by_subject)
        duplicates += len(mails) - len(by_subject)
    addressed = {str(m["To"]) for m in smtp.mailbox.messages}
    assert all(a.split("@")[0] in stored or ADMIN[1] in a for a in addressed), addressed

    # The audit chain is whole, written by three instances and two of them restarted.
    verified = subprocess.run([str(ums_binary()), "audit", "verify"],
                              env={**instances[0].env}, cwd=root, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert int(primary.sql("SELECT count(*) FROM audit_logs WHERE action = 'auth.register'")) \
        == len(stored)

    # The replica served reads (and never a stale one, above).
    served = sum(i.metric('ums_replica_reads_total{served_by="replica"}') for i in instances)
    assert served > 0, "the replica served no read"
    for instance in instances:
        ready = httpx.get(f"{instance.url}/ready", timeout=5).json()
        assert ready["checks"]["replica"].startswith("ok"), ready

    # The replica goes away: reads go to the primary, and /ready says so.
    replica.stop("immediate")
    listed = httpx.get(f"{nginx.url}/api/users?per_page=1", timeout=10,
                       headers={"Authorization": f"Bearer {admin_token}"})
    assert listed.status_code == 200 and listed.json()["total"] >= len(stored)

    def replica_check(instance: Instance) -> str:
        return httpx.get(f"{instance.url}/ready", timeout=5).json()["checks"]["replica"]

    for instance in instances:
        wait_until(lambda: replica_check(instance).startswith("unreachable"), "replica down")
        assert httpx.get(f"{instance.url}/ready", timeout=5).status_code == 200
    before = sum(i.metric('ums_replica_reads_total{served_by="primary_replica_down"}')
                 for i in instances)
    for _ in range(6):
        assert httpx.get(f"{nginx.url}/api/users?per_page=1", timeout=10,
                         headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
    after = sum(i.metric('ums_replica_reads_total{served_by="primary_replica_down"}')
                for i in instances)
    assert after >= before + 6
    replica.start()
    for instance in instances:
        wait_until(lambda: replica_check(instance).startswith("ok"), "replica back")

    report = {kind: sum(1 for c in succeeded if c.what == kind)
              for kind in ("register", "list", "login", "refresh", "me")}
    print(f"\ntopology: {len(succeeded)} requests succeeded {report}, {len(failed)} failed "
          f"(in flight on the killed instance), {len(stored)} accounts, "
          f"{len(smtp.mailbox.messages)} emails ({duplicates} resent copies), "
          f"{served:.0f} reads served by the replica, "
          f"{sum(c.transport.resent for c in clients)} requests sent again after nginx closed "
          "a kept-alive connection")
