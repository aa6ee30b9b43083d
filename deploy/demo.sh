#!/usr/bin/env bash
# Starts a Carebell node with a seeded demo: simulated tablets press their buttons and bot
# operators answer, printed as it happens. PostgreSQL and Redis are started (or installed) first
# when missing. Arguments go to `carebell demo` (e.g. --duration 20s); Ctrl-C stops it.
# The demo's own database (carebell_demo unless CAREBELL_DATABASE_URL says otherwise) is made
# afresh on every run, so each demo starts with an empty queue.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/ensure-services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/carebell-target}"
export CAREBELL_DATABASE_URL="${CAREBELL_DATABASE_URL:-postgres://carebell:carebell@127.0.0.1:5432/carebell_demo}"
export CAREBELL_REDIS_URL="${CAREBELL_REDIS_URL:-redis://127.0.0.1:6379/}"

database="${CAREBELL_DATABASE_URL##*/}"
server="${CAREBELL_DATABASE_URL%/*}/postgres"
psql "$server" -qc "drop database if exists $database with (force)" >/dev/null
psql "$server" -qc "create database $database" >/dev/null

cargo build --quiet --bin carebell --bin tablet-sim
exec "$CARGO_TARGET_DIR/debug/carebell" demo "$@"
