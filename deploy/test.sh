#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and Redis, the browser tests in Debian's
# Chromium and a short run of every fuzz target (each started or installed first when missing). Builds into a target directory outside the clone, kept between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/ensure-services.sh
./deploy/ensure-browser.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/carebell-target}"
export CAREBELL_TEST_DATABASE_URL="${CAREBELL_TEST_DATABASE_URL:-postgres://carebell:carebell@127.0.0.1:5432/postgres}"
export CAREBELL_TEST_REDIS_URL="${CAREBELL_TEST_REDIS_URL:-redis://127.0.0.1:6379/}"

# Databases left behind by earlier runs (each test makes its own).
stale=$(psql "$CAREBELL_TEST_DATABASE_URL" -tAc \
  "select datname from pg_database where datname like 'carebell_test_%'" 2>/dev/null || true)
for database in $stale; do
  psql "$CAREBELL_TEST_DATABASE_URL" -qc "drop database if exists $database" >/dev/null 2>&1 || true
done

# The programs some tests start (the floor program, tablet-fleet, carebell itself).
cargo build --workspace --bins

# A short run of every fuzz target (cargo-fuzz on nightly, installed when missing); a finding
# fails the suite after the tests have run.
fuzz_status=0
./deploy/fuzz.sh "${CAREBELL_FUZZ_SECONDS:-10}" || fuzz_status=$?

test_status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || test_status=$?
else
  echo "carebell: cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@" || test_status=$?
fi
if [ "$fuzz_status" -ne 0 ]; then
  echo "carebell: the fuzz run failed (see above); the suite fails" >&2
  exit "$fuzz_status"
fi
exit "$test_status"
