"""The hardening of deploy/systemd/ums.service, held against what UMS really does.

No systemd runs here to apply the unit, so the test does the next best thing: systemd checks
the file (`systemd-analyze verify`, and `security` for its exposure), then UMS runs under
strace with the unit's command and environment through the flows of a working day (start and
migrate, register with its email, sign in, refresh, /me, a password reset email, an admin
list, metrics, logout, SIGTERM), and every system call, socket, file and device it used is
checked against what the unit allows. A call the unit's seccomp filter refuses would kill the
service with SIGSYS in production; a path outside its view would fail there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_topology import (
    ADMIN,
    PASSWORD,
    REPO,
    SmtpServer,
    base_settings,
    free_port,
    read_unit,
    service_environment,
    ums_binary,
    wait_until,
)

UNIT = REPO / "deploy" / "systemd" / "ums.service"
SERVICE_USER = 65534  # nobody: unprivileged, as DynamicUser's user is


def unit_settings(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
            if line.startswith(f"{key}=")]


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """A systemd system-call group, nested groups expanded, as systemd-analyze lists it."""
    seen = set() if seen is None else seen
    calls: set[str] = set()
    listing = subprocess.run(["systemd-analyze", "syscall-filter", group], check=True,
                             capture_output=True, text=True).stdout
    for line in listing.splitlines()[1:]:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name.startswith("@"):
            if name not in seen:
                seen.add(name)
                calls |= expand(name, seen)
        else:
            calls.add(name)
    return calls


def allowed_system_calls() -> set[str]:
    """The unit's SystemCallFilter lines: the first allows, a `~` line takes away."""
    allowed: set[str] = set()
    for line in unit_settings("SystemCallFilter"):
        deny = line.startswith("~")
        groups = set()
        for name in line.lstrip("~").split():
            groups |= expand(name) if name.startswith("@") else {name}
        allowed = allowed - groups if deny else allowed | groups
    return allowed


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None or shutil.which("strace") is None:
        pytest.exit("systemd-analyze and strace are needed (apt-get install systemd strace)", 2)
    return tool


def test_systemd_accepts_the_unit_and_rates_its_exposure_low(systemd_analyze, tmp_path):
    # The unit as installed, its ExecStart pointing at this build (verify checks it is there).
    unit = tmp_path / "ums.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ums", str(ums_binary())))
    verified = subprocess.run([systemd_analyze, "verify", str(unit)], check=False,
                              capture_output=True, text=True)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    # systemd's own score of what the service could still do if taken over: 0 (nothing) to
    # 10; the threshold is in tenths. 2.0 and below is what systemd calls "OK".
    rated = subprocess.run([systemd_analyze, "security", "--offline=true", "--threshold=20",
                            str(unit)], check=False, capture_output=True, text=True)
    assert rated.returncode == 0, rated.stdout[-2000:]
    print("\n" + rated.stdout.strip().splitlines()[-1])


# strace -ff -y: one file a thread, so no call is split across lines, and each descriptor
# shown with its path.
SYSCALL = re.compile(r"^([a-z0-9_]+)\(")
OPEN = re.compile(r'^(?:open\(|openat2?\((?:AT_FDCWD|\d+)(?:<([^>]*)>)?, )"([^"]*)", (.*)')
CHANGE = re.compile(r"^(unlink|unlinkat|rename|renameat|renameat2|mkdir|mkdirat|rmdir|truncate"
                    r"|symlink|symlinkat|link|linkat|chmod|fchmodat|chown|lchown|fchownat"
                    r"|mknod|mknodat|utimensat)\(")
SOCKET = re.compile(r"^socket\((AF_[A-Z0-9]+)")
FAILED = re.compile(r"= -1 [A-Z]+")


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory the unprivileged service user can use (pytest's own are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ums-unit-"))
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        os.chown(path, SERVICE_USER, SERVICE_USER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_service_user(argv: list[str]) -> list[str]:
    """DynamicUser=yes: the service never runs as root. (Run as root, SQLite alone would
    already differ: it hands each journal it creates to the database's owner, with fchown.)"""
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}",
                "--clear-groups", *argv]
    return argv


def test_ums_stays_inside_the_units_sandbox(systemd_analyze, work):
    unit = read_unit(UNIT)
    state = work / "state"  # stands for StateDirectory=ums, /var/lib/ums
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, SERVICE_USER, SERVICE_USER)
    smtp = SmtpServer()
    port = free_port()
    env = service_environment(unit, {
        **base_settings(smtp),
        # The database stays the unit's SQLite file, in the stand-in state directory.
        "UMS_DATABASE_URL": unit.environment["UMS_DATABASE_URL"].replace(
            "/var/lib/ums", str(state)),
    }, port)
    # The binary beside the state, where the service user can reach it wherever the
    # checkout is (a clone under /root is not readable to it).
    binary = work / "ums"
    shutil.copy2(ums_binary(), binary)
    os.chmod(binary, 0o755)
    traces = work / "traces"
    traces.mkdir()
    if os.geteuid() == 0:
        os.chown(traces, SERVICE_USER, SERVICE_USER)
    log = (work / "ums.log").open("wb")
    tracer = subprocess.Popen(
        as_service_user(["strace", "-ff", "-y", "-qq", "-s", "256", "-o", str(traces / "t"),
                         str(binary), *unit.command[1:]]),
        env=env, cwd=state, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert tracer.poll() is None, (work / "ums.log").read_text()[-3000:]
            try:
                return httpx.get(f"{url}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "ums under strace", timeout=120)
        with httpx.Client(base_url=url, timeout=30) as http:
            registered = http.post("/api/auth/register", json={
                "username": "carol", "email": "carol@lab.org", "password": PASSWORD})
            assert registered.status_code == 201, registered.text
            tokens = http.post("/api/auth/login", json={"username": "carol",
                                                         "password": PASSWORD}).json()
            rotated = http.post("/api/auth/refresh",
                                json={"refresh_token": tokens["refresh_token"]})
            assert rotated.status_code == 200, rotated.text
            access = rotated.json()["access_token"]
            me = http.get("/api/auth/me", headers={"Authorization": f"Bearer {access}"})
            assert me.status_code == 200, me.text
            assert http.post("/api/auth/forgot-password",
                             json={"email": "carol@lab.org"}).status_code == 202
            admin = http.post("/api/auth/login", json={"username": ADMIN[0],
                                                        "password": ADMIN[2]}).json()
            listed = http.get("/api/users", params={"q": "carol"},
                              headers={"Authorization": f"Bearer {admin['access_token']}"})
            assert listed.status_code == 200, listed.text
            assert http.get("/metrics").status_code == 200
            assert http.post("/api/auth/logout", json={},
                             headers={"Authorization": f"Bearer {access}"}).status_code == 204
        wait_until(lambda: len(smtp.mailbox.to("carol@lab.org")) >= 2, "carol's two emails")

        # systemd stops it with the unit's signal; strace passes on the exit code.
        children = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), unit.stop_signal)
        assert tracer.wait(timeout=unit.stop_timeout) == 0, (work / "ums.log").read_text()
    finally:
        if tracer.poll() is None:
            tracer.kill()
        smtp.shutdown()
        log.close()

    threads = {path.suffix.lstrip("."): path.read_text(errors="replace").splitlines()
               for path in traces.iterdir()}
    lines = [line for thread in threads.values() for line in thread]
    used = {m.group(1) for line in lines if (m := SYSCALL.match(line))}
    assert {"execve", "accept4", "connect", "pwrite64"} <= used, sorted(used)  # it was read
    refused = used - allowed_system_calls()
    assert not refused, f"the unit's SystemCallFilter would kill ums on: {sorted(refused)}"

    # RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
    families = {m.group(1) for line in lines if (m := SOCKET.match(line))}
    assert families <= set(unit_settings("RestrictAddressFamilies")[0].split()), families

    # MemoryDenyWriteExecute=yes: no memory both writable and executable, ever.
    wx = [line for line in lines
          if re.match(r"^(mmap|mprotect|pkey_mprotect)\(", line) and "PROT_EXEC" in line
          and ("PROT_WRITE" in line or "mprotect" in line)]
    assert not wx, wx[:5]

    # What it opened and changed: ProtectSystem=strict leaves it the state directory and
    # PrivateTmp's /tmp to write (ProtectKernelTunables makes /proc and /sys read-only too);
    # PrivateDevices the pseudo-devices; ProtectProc=invisible hides every process but its own.
    def absolute(path: str, directory: str | None) -> str:
        return path if path.startswith("/") else str(Path(directory or state) / path)

    opened = [(absolute(m.group(2), m.group(1)), m.group(3)) for line in lines
              if (m := OPEN.match(line)) and not FAILED.search(line)]
    changed = [absolute(path, None) for line in lines
               if CHANGE.match(line) and not FAILED.search(line)
               for path in re.findall(r'"([^"]*)"', line)]
    devices = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
               "/dev/tty"}
    writable = (str(state) + "/", "/tmp/")
    for path, flags in opened:
        if path.startswith("/dev/"):
            assert path in devices, f"PrivateDevices hides {path}"
        if process := re.match(r"/proc/(\d+)(/|$)", path):
            assert process.group(1) in threads, f"ProtectProc=invisible hides {path}"
        if any(flag in flags for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")):
            assert path.startswith(writable) or path in devices, (
                f"ProtectSystem=strict makes {path} read-only")
    for path in changed:
        assert path.startswith(writable), f"ProtectSystem=strict makes {path} read-only"
    print(f"\nsandbox: {len(used)} distinct system calls in {len(threads)} threads, all allowed "
          f"by the unit's filter; {len(opened)} files opened, {len(changed)} paths changed, "
          f"socket families {sorted(families)}")
