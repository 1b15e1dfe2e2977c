#!/usr/bin/env bash
# Creates .venv and installs Kiban into it. Works on a fresh Debian machine with Python 3.11:
# installs python3-venv through apt only when venv is missing.
# Usage: scripts/bootstrap.sh [extras]   e.g. scripts/bootstrap.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"

apt_install() {
  # Only root can install; `apt-get update` first, once per run.
  if [ "$(id -u)" != 0 ]; then echo "bootstrap: please install: $*" >&2; return 1; fi
  if [ -z "${KIBAN_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export KIBAN_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "bootstrap: Python 3.11 or newer is required" >&2; exit 1
fi
# The Japanese font embedded in issued PDFs (IPAex Mincho, TrueType).
if [ ! -f /usr/share/fonts/opentype/ipaexfont-mincho/ipaexm.ttf ] && [ -z "${KIBAN_DOCUMENT_FONT:-}" ]; then
  apt_install fonts-ipaexfont-mincho || echo "bootstrap: without fonts-ipaexfont-mincho no PDF can be issued" >&2
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv python3-pip
    "$PY" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v '^WARNING: Location' || true
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import kiban' || { echo "bootstrap: installing kiban failed" >&2; exit 1; }
