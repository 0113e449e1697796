#!/usr/bin/env bash
# The topology test (tests/topology/test_topology.py): a PostgreSQL primary and streaming
# replica, Redis, three ums instances from deploy/systemd/ums.service and nginx running
# deploy/nginx/ums.conf, all on loopback, built by the test from Debian's packages (nginx,
# redis-server, postgresql). With it, tests/topology/test_unit.py: the unit file checked by
# systemd-analyze, and UMS run under strace held to the unit's sandbox. It runs against
# $UMS_BIN, else target/debug/ums. Extra arguments go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
UMS_BIN="$(realpath -m "${UMS_BIN:-$repo/target/debug/ums}")"
export UMS_BIN
if [[ ! -x "$UMS_BIN" ]]; then
  echo "tests/topology: no UMS binary at $UMS_BIN (cargo build, or set UMS_BIN)" >&2
  exit 2
fi
for tool in nginx redis-server psql pg_config systemd-analyze strace; do
  command -v "$tool" >/dev/null || { echo "tests/topology: $tool is not installed" >&2; exit 2; }
done

venv="$(mktemp -d "${TMPDIR:-/tmp}/ums-topology-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
# The portal's client, for its transport: the load's clients resend as it does.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check pytest "$repo/clients/python"
cd "$here"
"$venv/bin/python" -m pytest -s "$@"
