#!/usr/bin/env bash
# Takes a logical backup of the Carebell database: one `pg_dump --format=custom` archive (a
# consistent snapshot, taken while the nodes keep working) and a SHA-256 file beside it.
#
#   deploy/backup.sh [--database-url URL] DIRECTORY
#
# The URL comes from --database-url or CAREBELL_DATABASE_URL. Connect as a role that may read
# every table (the schema's owner, or a backup role in pg_read_all_data). A password is best
# kept in ~/.pgpass (PGPASSFILE) rather than in the URL, where `ps` shows it to local users.
#
# Writes DIRECTORY/carebell-<database>-<UTC time>.dump and .dump.sha256 (`sha256sum -c`
# format) and prints the archive's path on stdout; progress and errors go to stderr. The
# archive keeps owners and privileges (the grants that make the audit log append-only), so
# restore it with deploy/restore-drill.sh or as docs/backup.md says. Roles are not in it: they
# belong to the cluster, not to the database.
#
# Exit status (sysexits): 0 written; 64 bad usage; 66 the database does not exist; 69 the
# server cannot be reached, or pg_dump is missing or older than the server; 73 the directory
# is missing or not writable, or the file exists; 74 pg_dump or the check of its archive
# failed (nothing is left under the final name); 77 authentication or permission refused.
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/pg-common.sh
. "$script_dir/pg-common.sh"

program="backup.sh"

usage() {
  cat <<'USAGE'
usage: deploy/backup.sh [--database-url URL] DIRECTORY

Writes DIRECTORY/carebell-<database>-<UTC time>.dump (pg_dump --format=custom) and its
.sha256 file, and prints the archive's path. The URL defaults to CAREBELL_DATABASE_URL.
See docs/backup.md.
USAGE
}

fail() {
  local status="$1"
  shift
  echo "$program: error: $*" >&2
  exit "$status"
}

database_url="${CAREBELL_DATABASE_URL:-}"
directory=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--database-url)
      [ $# -ge 2 ] || fail "$EX_USAGE" "$1 needs a value"
      database_url="$2"
      shift 2 ;;
    --database-url=*)
      database_url="${1#*=}"
      shift ;;
    -h|--help)
      usage
      exit 0 ;;
    -*)
      fail "$EX_USAGE" "unknown option $1 (see --help)" ;;
    *)
      [ -z "$directory" ] || fail "$EX_USAGE" "one directory only (got '$directory' and '$1')"
      directory="$1"
      shift ;;
  esac
done

[ -n "$directory" ] || fail "$EX_USAGE" "no directory given (usage: $program [--database-url URL] DIRECTORY)"
[ -n "$database_url" ] || fail "$EX_USAGE" "no database: pass --database-url or set CAREBELL_DATABASE_URL"

for tool in pg_dump pg_restore psql sha256sum; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$EX_UNAVAILABLE" "$tool not found: install the PostgreSQL client (postgresql-client) and coreutils"
done

# The directory first: a backup that cannot be written should not cost a dump. Root passes
# every permission test, so the only proof is making a file there.
[ -e "$directory" ] || fail "$EX_CANTCREAT" "the directory $directory does not exist (create it first)"
[ -d "$directory" ] || fail "$EX_CANTCREAT" "$directory is not a directory"
probe=$(mktemp -p "$directory" .carebell-backup-probe.XXXXXX 2>/dev/null) ||
  fail "$EX_CANTCREAT" "the directory $directory is not writable"
rm -f "$probe"

# Never prompt for a password (a backup runs unattended) and do not wait for ever.
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"

if ! server=$(psql --no-password --no-psqlrc -X -tA -v ON_ERROR_STOP=1 --dbname="$database_url" \
    -c "select current_database() || ' ' || current_setting('server_version_num')" 2>&1); then
  connection_failure "$database_url" "$server" "$EX_NOINPUT" \
    "the database at $(redact "$database_url") does not exist"
fi
database="${server% *}"
server_version_num="${server##* }"

# pg_dump must be at least as new as the server.
dump_major=$(pg_dump --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/')
server_major=$((server_version_num / 10000))
if [ "$dump_major" -lt "$server_major" ]; then
  fail "$EX_UNAVAILABLE" "pg_dump $dump_major is older than the server ($server_major): install postgresql-client-$server_major"
fi

safe_name=$(tr -c 'A-Za-z0-9_.-' '_' <<<"$database" | sed 's/_$//')
stamp=$(date -u +%Y%m%dT%H%M%SZ)
name="carebell-$safe_name-$stamp.dump"
final="$directory/$name"
[ ! -e "$final" ] || fail "$EX_CANTCREAT" "$final already exists (one backup per second at most)"

# Written under a temporary name and renamed when complete: a file with the final name is
# always a whole archive.
partial=$(mktemp -p "$directory" ".$name.XXXXXX" 2>/dev/null) ||
  fail "$EX_CANTCREAT" "cannot create a file in $directory"
cleanup() { rm -f "$partial" "$partial.sha256"; }
trap cleanup EXIT

echo "$program: dumping $database from $(redact "$database_url")" >&2
# pg_dump reads everything in one REPEATABLE READ transaction: a consistent snapshot, taken
# without stopping the nodes. Owners and privileges stay in the archive (no --no-owner,
# no --no-acl); whether to apply them is decided at restore time.
if ! errors=$(pg_dump --no-password --format=custom --file="$partial" --dbname="$database_url" 2>&1); then
  case "$errors" in
    *"permission denied"*) fail "$EX_NOPERM" "pg_dump was refused (connect as a role that may read every table): ${errors//$'\n'/ }" ;;
    *) fail "$EX_IOERR" "pg_dump failed: ${errors//$'\n'/ }" ;;
  esac
fi
[ -z "$errors" ] || echo "$errors" >&2

# The archive must be readable before it is called a backup.
if ! entries=$(pg_restore --list "$partial" 2>&1); then
  fail "$EX_IOERR" "the archive pg_dump wrote cannot be read back: ${entries//$'\n'/ }"
fi
sync "$partial" 2>/dev/null || true

checksum=$(sha256sum "$partial" | cut -d' ' -f1)
printf '%s  %s\n' "$checksum" "$name" >"$partial.sha256"
mv "$partial" "$final"
mv "$partial.sha256" "$final.sha256"
sync "$final" "$final.sha256" 2>/dev/null || true
trap - EXIT

size=$(stat -c %s "$final")
count=$(grep -c '^[0-9]' <<<"$entries" || true)
echo "$program: wrote $final ($size bytes, $count archive entries, sha256 $checksum)" >&2
echo "$final"
