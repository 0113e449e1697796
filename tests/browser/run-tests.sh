#!/usr/bin/env bash
# The console's end-to-end tests: headless Chromium from Debian's `chromium` package, driven
# by Playwright for Python pointed at that executable (nothing downloads a browser), against
# the real server binary: $UMS_BIN, else target/debug/ums of this repository (cargo build
# first). They run when $UMS_TEST_CHROMIUM names the browser (.ci/run sets it); screenshots of
# every page go to $UMS_BROWSER_ARTIFACTS (default target/browser-artifacts). Extra arguments
# go to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

if [[ -z "${UMS_TEST_CHROMIUM:-}" ]]; then
  echo "tests/browser: UMS_TEST_CHROMIUM is not set (e.g. /usr/bin/chromium); skipped" >&2
  exit 0
fi
if [[ ! -x "$UMS_TEST_CHROMIUM" ]]; then
  echo "tests/browser: no browser at UMS_TEST_CHROMIUM=$UMS_TEST_CHROMIUM" >&2
  exit 2
fi
UMS_BIN="$(realpath -m "${UMS_BIN:-$repo/target/debug/ums}")"
export UMS_BIN
if [[ ! -x "$UMS_BIN" ]]; then
  echo "tests/browser: no UMS server binary at $UMS_BIN (run cargo build or set UMS_BIN)" >&2
  exit 2
fi
export UMS_BROWSER_ARTIFACTS="${UMS_BROWSER_ARTIFACTS:-$repo/target/browser-artifacts}"
mkdir -p "$UMS_BROWSER_ARTIFACTS"

venv="$(mktemp -d "${TMPDIR:-/tmp}/ums-browser-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
# Playwright's own browser download is never run: the tests launch $UMS_TEST_CHROMIUM.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "$repo/clients/python" pytest "playwright>=1.40,<2" "axe-playwright-python>=0.1.8,<0.2" pyotp
cd "$here"
"$venv/bin/python" -m pytest "$@"
echo "tests/browser: screenshots in $UMS_BROWSER_ARTIFACTS"
