#!/usr/bin/env bash
# Installs Kiban with its test tools and runs the whole suite: on SQLite, then on PostgreSQL.
# PostgreSQL: $KIBAN_TEST_PG_URL or postgresql+psycopg://root@127.0.0.1:5432/test. When it is not reachable the
# PostgreSQL run is skipped with a message, except under CI=true (or KIBAN_REQUIRE_POSTGRES=1), where it fails.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
scripts/bootstrap.sh test || exit 1
ensure_test_services || exit 1

run_pytest() {
  .venv/bin/python -m pytest "$@"
  local rc=$?
  # Exit code 5 means no test was collected: never a pass.
  if [ $rc -eq 5 ]; then echo "test.sh: no tests were collected" >&2; return 1; fi
  return $rc
}

echo "== test suite on SQLite =="
run_pytest "$@"
sqlite_rc=$?

pg_url="${KIBAN_TEST_PG_URL:-postgresql+psycopg://root@127.0.0.1:5432/test}"
require_pg="${KIBAN_REQUIRE_POSTGRES:-}"
[ "${CI:-}" = "true" ] && require_pg=1
pg_rc=0
if .venv/bin/python - "$pg_url" <<'PY'
import sys
from sqlalchemy import create_engine, text
try:
    with create_engine(sys.argv[1]).connect() as c:
        c.execute(text("select 1"))
except Exception as e:
    print(f"PostgreSQL not reachable: {e.__class__.__name__}", file=sys.stderr)
    sys.exit(1)
PY
then
  echo "== test suite on PostgreSQL (tests that use a database) =="
  KIBAN_TEST_DATABASE_URL="$pg_url" KIBAN_TEST_DB_ONLY=1 run_pytest "$@"
  pg_rc=$?
elif [ -n "$require_pg" ]; then
  echo "test.sh: PostgreSQL is required here (CI) and is not reachable at $pg_url" >&2
  pg_rc=1
else
  echo "test.sh: PostgreSQL not reachable at $pg_url: the PostgreSQL run is skipped (set CI=true to require it)" >&2
fi

if [ $sqlite_rc -ne 0 ] || [ $pg_rc -ne 0 ]; then
  echo "test.sh: FAILED (sqlite=$sqlite_rc postgresql=$pg_rc)" >&2
  exit 1
fi
echo "test.sh: all runs passed"
