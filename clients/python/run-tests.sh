#!/usr/bin/env bash
# Install the Python client (with its Django extra) into a throwaway virtualenv and run its
# tests against a real UMS server binary: $UMS_BIN, else target/debug/ums of this repository
# (build it first with `cargo build`). Extra arguments go to pytest. $PYTHON picks the
# interpreter (default python3, 3.10 or newer). Exits with pytest's status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

UMS_BIN="$(realpath -m "${UMS_BIN:-$repo/target/debug/ums}")"
export UMS_BIN
if [[ ! -x "$UMS_BIN" ]]; then
  echo "run-tests.sh: no UMS server binary at $UMS_BIN (run cargo build or set UMS_BIN)" >&2
  exit 2
fi

venv="$(mktemp -d "${TMPDIR:-/tmp}/ums-client-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT

echo "== virtualenv ($("$python" --version)) in $venv"
"$python" -m venv "$venv"
cd "$repo"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "./clients/python[django]" pytest openapi-spec-validator pyotp mmdb-writer
"$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -Ei '^(ums-client|django|httpx|pyjwt|cryptography|pytest|pyotp|mmdb[-_]writer) '

echo "== pytest against $UMS_BIN"
cd "$here"
"$venv/bin/python" -m pytest "$@"
