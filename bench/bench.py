#!/usr/bin/env python3
"""Helpers of bench/run (standard library only).

  bench.py users-csv FILE COUNT HASH     the import file: COUNT users sharing one PHC hash
  bench.py seed URL LABS PER_LAB         labs and memberships through the admin API
  bench.py tokens WORK                   token lists for the scenarios from the login harvest
  bench.py report WORK README            the results table: stdout and bench/README.md
"""

import csv
import http.client
import json
import os
import statistics
import sys
import threading
import urllib.parse
from datetime import datetime, timezone

ROLES = ["lab_admin", "member", "member", "member", "viewer"]


def username(number):
    return f"bench{number:05d}"


# ---------------------------------------------------------------------------- users-csv


def users_csv(path, count, password_hash):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["username", "email", "password_hash", "first_name", "last_name",
                         "is_active", "is_admin"])
        for number in range(1, count + 1):
            writer.writerow([username(number), f"{username(number)}@bench.example",
                             password_hash, "Bench", f"User {number}", "true", "false"])


# ---------------------------------------------------------------------------- seed


class Client:
    """One keep-alive HTTP/1.1 connection; raises on an unexpected status."""

    def __init__(self, base, token=None):
        url = urllib.parse.urlsplit(base)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.token = token

    def call(self, method, path, body=None, expect=(200,)):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = json.dumps(body) if body is not None else None
        self.connection.request(method, path, body=payload, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status not in expect:
            raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None


def parallel(work, items, workers=4):
    """Runs work(client_index, item) over items with `workers` threads."""
    errors = []

    def run(index):
        try:
            for item in items[index::workers]:
                work(index, item)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"seeding failed: {errors[0]}")


def seed(base, labs, per_lab):
    admin = Client(base)
    login = admin.call("POST", "/api/auth/login", {
        "username": os.environ["UMS_BOOTSTRAP_ADMIN_USERNAME"],
        "password": os.environ["UMS_BOOTSTRAP_ADMIN_PASSWORD"]})
    token = login["access_token"]
    admin.token = token
    workers = 4
    clients = [Client(base, token) for _ in range(workers)]

    # user ids by username, through the admin list (100 per page)
    ids = {}
    page = 1
    while True:
        result = admin.call("GET", f"/api/users?q=bench&per_page=100&page={page}")
        for user in result["items"]:
            ids[user["username"]] = user["id"]
        if page >= result["pages"]:
            break
        page += 1

    lab_ids = [None] * labs

    def create_lab(worker, index):
        lab = clients[worker].call("POST", "/api/labs", {
            "code": f"lab{index + 1:03d}", "name": f"Bench lab {index + 1}",
            "description": "created by bench/run"}, expect=(201,))
        lab_ids[index] = lab["id"]

    parallel(create_lab, list(range(labs)), workers)

    memberships = []
    for index in range(labs):
        for slot in range(per_lab):
            number = index * per_lab + slot + 1
            memberships.append((lab_ids[index], ids[username(number)], ROLES[slot % len(ROLES)]))

    def add_member(worker, membership):
        lab_id, user_id, role = membership
        clients[worker].call("POST", f"/api/labs/{lab_id}/members",
                             {"user_id": user_id, "role": role}, expect=(201,))

    parallel(add_member, memberships, workers)
    print(f"seeded {len(ids)} users found, {labs} labs, {len(memberships)} memberships")


# ---------------------------------------------------------------------------- tokens


def tokens(work):
    """From harvest/login-*.tsv (user_id, username, lab_id, role, access, refresh) build:
    me.tsv, access.tsv, members.tsv ("token<TAB>path"), refresh-a.txt, refresh-b.txt and
    refresh-c.txt (the unused refresh tokens, split between the RS256 refresh, the mixed and
    the EdDSA refresh scenario), and legit.tsv
    (the legitimate user of the storm scenario, who is kept out of the storm)."""
    rows = []
    harvest = os.path.join(work, "harvest")
    for name in sorted(os.listdir(harvest)):
        with open(os.path.join(harvest, name)) as file:
            for line in file:
                fields = line.rstrip("\n").split("\t")
                if len(fields) == 6 and fields[4] and fields[5]:
                    rows.append(fields)
    if len(rows) < 100:
        raise SystemExit(f"only {len(rows)} logins were harvested; the login scenario failed")
    rows.sort(key=lambda row: int(row[0]))
    legit, rows_for_load = rows[-1], rows[:-1]

    def write(name, lines):
        with open(os.path.join(work, name), "w") as file:
            file.write("".join(line + "\n" for line in lines))

    write("me.tsv", [f"{r[4]}\t/api/auth/me" for r in rows_for_load])
    members = [r for r in rows_for_load if r[2]]
    write("access.tsv", [f"{r[4]}\t/api/labs/{r[2]}/access" for r in members])
    write("members.tsv", [f"{r[4]}\t/api/labs/{r[2]}/members" for r in members])
    refresh = [r[5] for r in rows_for_load]
    write("refresh-a.txt", refresh[0::3])
    write("refresh-b.txt", refresh[1::3])
    write("refresh-c.txt", refresh[2::3])
    write("legit.tsv", [f"{legit[4]}\t/api/auth/me"])
    with open(os.path.join(work, "legit-username"), "w") as file:
        file.write(legit[1])
    print(f"{len(rows)} sessions: {len(members)} with a lab; legitimate user {legit[1]}")


# ---------------------------------------------------------------------------- report


def load_results(work):
    """Results by scenario; the rounds of an interleaved comparison (`name.1`, `name.2`, ...)
    are represented by their median round, which carries every round's rate."""
    results, rounds = {}, {}
    with open(os.path.join(work, "results.jsonl")) as file:
        for line in file:
            if line.strip():
                entry = json.loads(line)
                base, _, number = entry["name"].rpartition(".")
                if base and number.isdigit():
                    rounds.setdefault(base, []).append(entry)
                else:
                    results[entry["name"]] = entry
    for base, entries in rounds.items():
        entries.sort(key=lambda entry: entry["rps"])
        median = dict(entries[len(entries) // 2])
        median["round_rps"] = [entry["rps"] for entry in entries]
        results[base] = median
    return results


def mib(kib):
    return kib / 1024


def fmt_rate(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_ms(value):
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def cpu_split(entry, meta):
    db = f"{entry['db_cores']:.2f}" if meta["database_kind"] == "postgres" else "–"
    return (f"{entry['server_cores']:.2f} / {db} / {entry['wrk_cores']:.2f} / "
            f"{entry['other_cores']:.2f}")


def errors_of(entry):
    expected = set(entry.get("expected", []))
    bad = sum(n for status, n in entry["status"].items()
              if not (200 <= int(status) < 300 or int(status) in expected))
    return bad + entry["socket_errors"]


def report(work, readme):
    meta = json.load(open(os.path.join(work, "meta.json")))
    primitives = json.load(open(os.path.join(work, "primitives.json")))
    end_path = os.path.join(work, "primitives-end.json")
    spread_line = None
    if os.path.exists(end_path):
        # timed before and after the load: the limits use the mean of the two medians
        end = json.load(open(end_path))
        spread_line = (
            f"- Primitives timed before and after the load: verify "
            f"{primitives['argon2id']['verify_us'] / 1000:.1f} / {end['argon2id']['verify_us'] / 1000:.1f} ms, "
            f"two threads {primitives['argon2id'].get('parallel_verify_per_s', 0):.1f} / "
            f"{end['argon2id'].get('parallel_verify_per_s', 0):.1f} verifications/s, RS256 sign "
            f"{primitives['rs256']['sign_us']:.0f} / {end['rs256']['sign_us']:.0f} µs; the limits "
            f"above use the means.")
        for kind, fields in (("argon2id", ("hash_us", "verify_us", "parallel_verify_per_s")),
                             ("rs256", ("sign_us", "verify_us")),
                             ("eddsa", ("sign_us", "verify_us"))):
            for field in fields:
                if field in primitives[kind] and field in end[kind]:
                    primitives[kind][field] = (primitives[kind][field] + end[kind][field]) / 2
    results = load_results(work)
    cores = meta["nproc"]
    hash_ms = primitives["argon2id"]["verify_us"] / 1000
    hash_limit = cores / (hash_ms / 1000)
    rs256_ms = primitives["rs256"]["sign_us"] / 1000
    # a refresh signs one token: the new access token (the refresh token is opaque)
    sign_limit = cores / (rs256_ms / 1000)

    def verdict(ok):
        return "met" if ok else "**missed**"

    targets = {
        "login": lambda e: (
            f"≥ {0.9 * hash_limit:,.0f}/s (90% of {hash_limit:,.0f}), p95 < {2 * hash_ms:.0f} ms",
            e["rps"] >= 0.9 * hash_limit and e["p95_ms"] < 2 * hash_ms),
        "refresh": lambda e: (
            f"≥ {0.9 * sign_limit:,.0f}/s (90% of {sign_limit:,.0f})", e["rps"] >= 0.9 * sign_limit),
        "refresh-eddsa": lambda e: ("≥ 5,000/s", e["rps"] >= 5000),
        "me": lambda e: ("≥ 20,000/s, p99 < 5 ms", e["rps"] >= 20000 and e["p99_ms"] < 5),
        "access": lambda e: ("≥ 20,000/s, p99 < 5 ms", e["rps"] >= 20000 and e["p99_ms"] < 5),
    }
    labels = {
        "login": "login (password)",
        "refresh": "token refresh (rotating)",
        "refresh-eddsa": "token refresh, EdDSA access tokens",
        "me": "GET /api/auth/me",
        "access": "GET /api/labs/{id}/access",
        "members": "GET /api/labs/{id}/members",
        "mixed": "mixed portal workload",
        "me-limits-off": "GET /me, rate limits off",
        "me-limits-memory": "GET /me, rate limits in memory",
        "me-limits-redis": "GET /me, rate limits in Redis",
        "me-cache-off": "GET /me, auth cache off",
        "me-cache-on": "GET /me, auth cache on",
        "access-cache-off": "GET /access, auth cache off",
        "access-cache-on": "GET /access, auth cache on",
        "access-unaudited": "GET /access, build without audit writes",
        "login-unaudited": "login, build without audit writes",
        "login-audited": "login, normal build",
        "login-unweighed": "login, build that does not weigh sign-ins",
        "login1-weighed": "login over 1 connection, normal build",
        "login1-unweighed": "login over 1 connection, build that does not weigh sign-ins",
        "legit-alone": "GET /me, 1 user, quiet server",
        "storm": "failed-login storm",
        "legit-storm": "GET /me, 1 user, during the storm",
    }
    lines = [
        "| scenario | conns | req/s | p50 ms | p95 ms | p99 ms | errors | CPU cores: server / db / wrk / other | busy after | peak RSS | target | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, label in labels.items():
        entry = results.get(name)
        if not entry:
            continue
        target, status = "", ""
        if name in targets:
            target, ok = targets[name](entry)
            status = verdict(ok)
        if "round_rps" in entry:
            target = ("median of " + " / ".join(fmt_rate(rate) for rate in entry["round_rps"]) +
                      " req/s, interleaved rounds")
        if name == "storm":
            seen = ", ".join(f"{s}: {n:,}" for s, n in sorted(entry["status"].items()))
            target = f"answers {seen}"
        lines.append(
            f"| {label} | {entry['connections']} | {fmt_rate(entry['rps'])} | "
            f"{fmt_ms(entry['p50_ms'])} | {fmt_ms(entry['p95_ms'])} | {fmt_ms(entry['p99_ms'])} | "
            f"{errors_of(entry):,} | {cpu_split(entry, meta)} | "
            f"{entry.get('busy_after_s', 0):.1f} s | "
            f"{mib(entry['rss_peak_kib']):.0f} MiB | {target} | {status} |")

    memory = meta.get("memory", {})
    idle = memory.get("idle_rss_kib")
    after = memory.get("after_logins_rss_kib")
    sessions = memory.get("sessions", 0)
    memory_lines = []
    if idle is not None:
        memory_lines.append(f"| idle: after seeding, {meta['nproc'] * 30 + 5} s without requests | {mib(idle):.0f} MiB | < 50 MiB | "
                            f"{verdict(mib(idle) < 50)} |")
    if after is not None:
        memory_lines.append(f"| after {sessions:,} logins, sessions kept | {mib(after):.0f} MiB "
                            f"(peak {mib(memory['after_logins_hwm_kib']):.0f} MiB) | < 100 MiB | "
                            f"{verdict(mib(after) < 100 and sessions >= 10000)}"
                            f"{'' if sessions >= 10000 else ' (fewer than 10,000 logins: --quick)'} |")
    if "end_rss_kib" in memory:
        memory_lines.append(f"| end of run (after the storm) | {mib(memory['end_rss_kib']):.0f} MiB "
                            f"(peak {mib(memory['end_hwm_kib']):.0f} MiB) | | |")

    login = results.get("login")
    refresh = results.get("refresh")
    ratio_lines = [
        f"- One Argon2id hash ({primitives['argon2id']['memory_kib']} KiB, "
        f"{primitives['argon2id']['iterations']} passes, 1 lane): "
        f"{primitives['argon2id']['hash_us'] / 1000:.1f} ms to hash, {hash_ms:.1f} ms to verify "
        f"(median of {primitives['argon2id']['runs']}); hash limit = {cores} cores ÷ {hash_ms:.1f} ms "
        f"= **{hash_limit:,.0f} logins/s**.",
        f"- RS256 (RSA-2048) sign {primitives['rs256']['sign_us']:.0f} µs, verify "
        f"{primitives['rs256']['verify_us']:.0f} µs; EdDSA sign {primitives['eddsa']['sign_us']:.0f} µs, "
        f"verify {primitives['eddsa']['verify_us']:.0f} µs (medians of {primitives['rs256']['runs']}). "
        f"A refresh signs one token (the access token; refresh tokens are opaque), so the "
        f"signature limit = {cores} ÷ {rs256_ms * 1000:.0f} µs = **{sign_limit:,.0f} refreshes/s**.",
    ]
    parallel = primitives["argon2id"].get("parallel_verify_per_s")
    if parallel:
        ratio_lines.append(
            f"- Measured with {primitives['argon2id']['parallel_threads']} threads verifying at "
            f"once (they share caches and memory bandwidth): **{parallel:,.1f} verifications/s**, "
            f"{100 * parallel / hash_limit:.0f}% of the hash limit.")
    if login:
        ratio_lines.append(
            f"- Login: {login['rps']:,.1f}/s = **{100 * login['rps'] / hash_limit:.0f}%** of the "
            f"hash limit" + (f" ({100 * login['rps'] / parallel:.0f}% of the measured parallel rate)"
                             if parallel else "") +
            f"; p95 {login['p95_ms']:.0f} ms = {login['p95_ms'] / hash_ms:.1f}× one hash. With "
            f"{login['connections']} connections always waiting, the mean latency is "
            f"{login['connections']} ÷ throughput = {1000 * login['connections'] / login['rps']:.0f} ms "
            f"(Little's law); even at the full hash limit it would be "
            f"{1000 * login['connections'] / hash_limit:.0f} ms = "
            f"{login['connections'] / hash_limit * 1000 / hash_ms:.1f}× one hash.")
    if refresh:
        ratio_lines.append(
            f"- Refresh: {refresh['rps']:,.0f}/s = **{100 * refresh['rps'] / sign_limit:.0f}%** of "
            f"the RS256 signature limit.")
    off = results.get("me-limits-off")
    if off:
        for name, where in (("me-limits-memory", "in memory"), ("me-limits-redis", "in Redis")):
            entry = results.get(name)
            if entry:
                ratio_lines.append(
                    f"- Rate limiter {where} on an authenticated GET /me: {entry['rps']:,.0f}/s "
                    f"against {off['rps']:,.0f}/s with the limits off = **{entry['rps'] / off['rps']:.2f}×** "
                    f"the throughput (medians of interleaved rounds; p99 {entry['p99_ms']:.1f} ms "
                    f"against {off['p99_ms']:.1f} ms).")
    for path in ("me", "access"):
        cache_off, cache_on = results.get(f"{path}-cache-off"), results.get(f"{path}-cache-on")
        if cache_off and cache_on:
            ratio_lines.append(
                f"- The auth cache on `{path}` (medians of interleaved rounds): "
                f"{cache_on['rps']:,.0f}/s on against {cache_off['rps']:,.0f}/s off = "
                f"**{cache_on['rps'] / cache_off['rps']:.2f}×** (p99 {cache_on['p99_ms']:.1f} ms "
                f"against {cache_off['p99_ms']:.1f} ms).")
    access_unaudited, access_on = results.get("access-unaudited"), results.get("access-cache-on")
    if access_unaudited and access_on:
        ratio_lines.append(
            f"- The access log's event of each `/access` (medians of interleaved rounds): "
            f"{access_on['rps']:,.0f}/s with it against {access_unaudited['rps']:,.0f}/s "
            f"without = **{access_on['rps'] / access_unaudited['rps']:.2f}×** (p99 "
            f"{access_on['p99_ms']:.1f} ms against {access_unaudited['p99_ms']:.1f} ms).")
    def cpu_ms(entry):
        """Server and database CPU per request, in ms."""
        return 1000 * (entry["server_cores"] + entry.get("db_cores", 0)) / entry["rps"]

    unaudited, audited = results.get("login-unaudited"), results.get("login-audited")
    if unaudited and audited:
        ratio_lines.append(
            f"- The audit write of a login (medians of interleaved rounds): "
            f"{audited['rps']:,.1f} logins/s with it against "
            f"{unaudited['rps']:,.1f}/s without = **{audited['rps'] / unaudited['rps']:.3f}×**; "
            f"server + database CPU per login {cpu_ms(audited):.1f} ms against "
            f"{cpu_ms(unaudited):.1f} ms.")
    unweighed = results.get("login-unweighed")
    if unweighed and audited:
        ratio_lines.append(
            f"- The risk evaluation of a login (medians of interleaved rounds): median latency "
            f"{audited['p50_ms']:.1f} ms weighed against {unweighed['p50_ms']:.1f} ms unweighed "
            f"(**{audited['p50_ms'] - unweighed['p50_ms']:+.2f} ms**); "
            f"{audited['rps']:,.1f} logins/s against {unweighed['rps']:,.1f}/s = "
            f"**{audited['rps'] / unweighed['rps']:.3f}×**; server + database CPU per login "
            f"{cpu_ms(audited):.2f} ms against {cpu_ms(unweighed):.2f} ms.")
    alone, alone_unweighed = results.get("login1-weighed"), results.get("login1-unweighed")
    if alone and alone_unweighed:
        ratio_lines.append(
            f"- The same over one connection (no queue: the difference is the evaluation's own "
            f"time): median latency {alone['p50_ms']:.2f} ms weighed against "
            f"{alone_unweighed['p50_ms']:.2f} ms unweighed "
            f"(**{alone['p50_ms'] - alone_unweighed['p50_ms']:+.2f} ms**).")
    inside = meta.get("risk_p50_seconds") or []
    if inside and audited:
        inside_ms = 1000 * statistics.median(inside)
        ratio_lines.append(
            f"- The risk evaluation timed inside the server (`ums_sign_in_risk_seconds`, the "
            f"median of each round's median): **{inside_ms:.3f} ms** a login, "
            f"{100 * inside_ms / audited['p50_ms']:.2f}% of the login's median latency "
            f"({audited['p50_ms']:.1f} ms).")
    if spread_line:
        ratio_lines.append(spread_line)

    header = (f"Run of {meta['date']} on {meta['database']}, commit `{meta['commit']}`"
              f"{' (with uncommitted changes)' if meta.get('dirty') else ''}; "
              f"`nproc` = {cores}, {meta['cpu']}; wrk {meta['wrk']}"
              f"{'; `--quick`' if meta.get('quick') else ''}.")
    section = "\n".join([
        header, "",
        *lines, "",
        "| memory (server VmRSS) | measured | target | |",
        "|---|---:|---|---|",
        *memory_lines, "",
        *ratio_lines, "",
    ])
    busiest = max(results.values(), key=lambda e: e.get("other_cores", 0), default=None)
    if busiest and busiest.get("other_cores", 0) > 0.2:
        meta.setdefault("notes", []).append(
            f"Processes other than the server, the database and wrk used up to "
            f"{busiest['other_cores']:.2f} cores (during `{busiest['name']}`): the machine was "
            f"not quiet, and the figures are lower than they would be on a quiet one.")
    if meta.get("notes"):
        section += "\n" + "\n".join(f"- {note}" for note in meta["notes"]) + "\n"
    print(section)

    begin = f"<!-- BEGIN results {meta['database_kind']} -->"
    end = f"<!-- END results {meta['database_kind']} -->"
    text = open(readme).read() if os.path.exists(readme) else ""
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(readme, "w") as file:
        file.write(text)


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "users-csv":
        users_csv(args[0], int(args[1]), args[2])
    elif command == "seed":
        seed(args[0], int(args[1]), int(args[2]))
    elif command == "tokens":
        tokens(args[0])
    elif command == "report":
        report(args[0], args[1])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
