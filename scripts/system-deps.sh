#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv (Debian/Ubuntu, as root):
#   postgresql  a throwaway server for the PostgreSQL instance-storage test
#   chromium    headless browser for the Dagster UI test
# Idempotent: when every binary is present it exits at once without touching apt.
set -euo pipefail

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
((${#missing[@]} == 0)) && exit 0

if ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${missing[*]} and no apt-get: install them with your package manager" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "system-deps: missing ${missing[*]}; run as root: sudo $0" >&2
    exit 1
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
