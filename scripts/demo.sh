#!/usr/bin/env bash
# Installs Kiban and runs the main job: `kiban demo` (arguments are passed on, e.g. --residents 5000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/kiban demo "$@"
