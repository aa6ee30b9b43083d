#!/usr/bin/env bash
# The restore drill: restores a backup made by deploy/backup.sh into a NEW database and checks
# that what came back is usable: the checksum, the archive, the restore itself (one
# transaction, owners and privileges as they were), the migrations table against
# crates/store/migrations, the row counts of the key tables, and the protections that keep the
# audit log, the event log and the ledger append-only. Prints a summary; exits non-zero when
# anything fails. It never touches an existing database.
#
#   deploy/restore-drill.sh [options] BACKUP_FILE TARGET_URL
#
# TARGET_URL names the database to create (postgres://user@host:port/NAME; NAME of lowercase
# letters, digits and underscores). Connect as the schema's owner or a superuser: the drill
# creates the database owned by the archive's owner and switches to the application's role to
# check what that role may do. See docs/backup.md.
#
# Exit status: 0 passed; 1 the restored database failed a check (it is kept for a look unless
# --drop); 64 bad usage; 65 the backup is corrupt (checksum mismatch, not an archive);
# 66 the backup or its checksum file is missing; 69 the server cannot be reached, a tool is
# missing, or a role the archive needs does not exist; 70 pg_restore failed (the empty
# database is dropped again); 73 the target database already exists; 77 authentication or
# permission refused.
set -euo pipefail

EX_CHECK=1

program="restore-drill.sh"
verdict=0
script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/pg-common.sh
. "$script_dir/pg-common.sh"

usage() {
  cat <<'USAGE'
usage: deploy/restore-drill.sh [options] BACKUP_FILE TARGET_URL

Restores BACKUP_FILE (from deploy/backup.sh) into the new database TARGET_URL names
(postgres://user@host:port/NAME) and checks it. Refuses a database that exists.

options:
  --checksum FILE        the SHA-256 file (default: BACKUP_FILE.sha256)
  --migrations DIR       the migrations to compare with (default: crates/store/migrations)
  --app-role ROLE        the application's role (default: carebell_app)
  --owner ROLE           the new database's owner (default: the archive's owner)
  --maintenance-db NAME  where CREATE DATABASE runs (default: postgres)
  --drop                 drop the drill database afterwards, whatever the outcome
See docs/backup.md.
USAGE
}

# Fatal errors before anything is restored: one line on stderr, the verdict on stdout.
fail() {
  local status="$1"
  shift
  echo "$program: error: $*" >&2
  echo "restore drill FAILED: $*"
  verdict=1
  exit "$status"
}

# join SEPARATOR WORD...: the words with SEPARATOR between them.
join() {
  local separator="$1" out="${2:-}" word
  shift 2 || shift $#
  for word in "$@"; do out+="$separator$word"; done
  echo "$out"
}

checksum_file=""
migrations_dir="$script_dir/../crates/store/migrations"
app_role="carebell_app"
owner=""
maintenance_db="postgres"
drop_after=0
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --checksum|--migrations|--app-role|--owner|--maintenance-db)
      [ $# -ge 2 ] || fail "$EX_USAGE" "$1 needs a value"
      case "$1" in
        --checksum) checksum_file="$2" ;;
        --migrations) migrations_dir="$2" ;;
        --app-role) app_role="$2" ;;
        --owner) owner="$2" ;;
        --maintenance-db) maintenance_db="$2" ;;
      esac
      shift 2 ;;
    --drop) drop_after=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) fail "$EX_USAGE" "unknown option $1 (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -eq 2 ] ||
  fail "$EX_USAGE" "expected BACKUP_FILE and TARGET_URL (usage: $program [options] BACKUP_FILE TARGET_URL)"
backup="${positional[0]}"
target_url="${positional[1]}"
checksum_file="${checksum_file:-$backup.sha256}"

identifier='^[a-z_][a-z0-9_]{0,62}$'
for role in "$app_role" ${owner:+"$owner"}; do
  [[ "$role" =~ $identifier ]] || fail "$EX_USAGE" "role name '$role' must match $identifier"
done
[[ "$maintenance_db" =~ $identifier ]] || fail "$EX_USAGE" "--maintenance-db '$maintenance_db' must match $identifier"

# TARGET_URL: scheme://authority/NAME[?query]. The maintenance URL is the same with NAME
# replaced.
case "$target_url" in
  postgres://*/*|postgresql://*/*) ;;
  *) fail "$EX_USAGE" "TARGET_URL must be a postgres:// URL ending in the new database's name" ;;
esac
url_base="${target_url%%\?*}"
url_query=""
[ "$url_base" = "$target_url" ] || url_query="?${target_url#*\?}"
target_db="${url_base##*/}"
[[ "$target_db" =~ $identifier ]] ||
  fail "$EX_USAGE" "the target database name '$target_db' must match $identifier"
maintenance_url="${url_base%/*}/$maintenance_db$url_query"

for tool in pg_restore psql sha256sum sha384sum; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$EX_UNAVAILABLE" "$tool not found: install the PostgreSQL client (postgresql-client) and coreutils"
done
[ -d "$migrations_dir" ] ||
  fail "$EX_USAGE" "no migrations directory at $migrations_dir (pass --migrations DIR)"
migrations_dir=$(cd "$migrations_dir" && pwd)

export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
psql_at() {
  local url="$1"
  shift
  psql --no-password --no-psqlrc -X -tA -q -v ON_ERROR_STOP=1 --dbname="$url" "$@"
}
on_target() { psql_at "$target_url" "$@"; }

echo "carebell restore drill"

# 1. The backup and its checksum.
[ -f "$backup" ] || fail "$EX_NOINPUT" "the backup $backup does not exist"
[ -f "$checksum_file" ] ||
  fail "$EX_NOINPUT" "no checksum file $checksum_file: a backup without one is not trusted (--checksum FILE)"
expected=$(awk 'NR == 1 { print tolower($1) }' "$checksum_file")
[[ "$expected" =~ ^[0-9a-f]{64}$ ]] ||
  fail "$EX_DATAERR" "$checksum_file holds no SHA-256 checksum"
actual=$(sha256sum "$backup" | cut -d' ' -f1)
echo "  backup:       $backup ($(stat -c %s "$backup") bytes)"
if [ "$actual" != "$expected" ]; then
  echo "  checksum:     FAILED (file $actual, $checksum_file says $expected)"
  fail "$EX_DATAERR" "checksum mismatch: $backup is not the file that was backed up (corrupt or replaced); nothing was restored"
fi
echo "  checksum:     ok (sha256 $actual)"

# 2. The archive can be read, and whose it is.
if ! toc=$(pg_restore --list "$backup" 2>&1); then
  echo "  archive:      FAILED"
  fail "$EX_DATAERR" "$backup is not a readable pg_dump archive: $(one_line "$toc")"
fi
header() { sed -n "s/^;[[:space:]]*$1:[[:space:]]*//p" <<<"$toc" | head -n 1; }
archive_format=$(header Format)
archive_db=$(header dbname)
archive_created=$(sed -n 's/^; Archive created at //p' <<<"$toc" | head -n 1)
archive_version=$(header "Dumped from database version")
entries=$(grep -c '^[0-9]' <<<"$toc" || true)
archive_owner=$(awk '$4 == "TABLE" && $5 != "DATA" { print $NF }' <<<"$toc" |
  sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
[ -n "$archive_owner" ] || fail "$EX_DATAERR" "the archive holds no tables: is it a Carebell backup?"
owner="${owner:-$archive_owner}"
echo "  archive:      ok ($archive_format format, $entries entries, database $archive_db, taken $archive_created, PostgreSQL $archive_version)"

# 3. The server, the roles the archive needs (roles live in the cluster, not in a dump), and
# the refusal to overwrite.
if ! state=$(psql_at "$maintenance_url" -F '|' -c "
    select (select string_agg(rolname, ',' order by rolname) from pg_roles
             where rolname in ('$owner', '$archive_owner', '$app_role')),
           exists (select 1 from pg_database where datname = '$target_db'),
           current_user" 2>&1); then
  connection_failure "$maintenance_url" "$state" "$EX_UNAVAILABLE" \
    "the maintenance database at $(redact "$maintenance_url") does not exist (--maintenance-db)"
fi
IFS='|' read -r present_roles target_exists connected_as <<<"$state"
for role in "$owner" "$archive_owner" "$app_role"; do
  case ",$present_roles," in
    *",$role,"*) ;;
    *) fail "$EX_UNAVAILABLE" "role $role does not exist on the target server: create the roles first (pg_dump does not carry roles; see docs/backup.md)" ;;
  esac
done
echo "  roles:        ok (owner $owner, application role $app_role; connected as $connected_as)"
if [ "$target_exists" = "t" ]; then
  fail "$EX_CANTCREAT" "the database $target_db already exists: the drill restores only into a new database and has left it untouched"
fi

created=0
restored=0
# Drops the database this run created: after a failed restore (it is empty) or when --drop
# asks. Never a database the drill did not create.
drop_target() {
  if [ "$created" -eq 1 ] && { [ "$drop_after" -eq 1 ] || [ "$restored" -eq 0 ]; }; then
    created=0
    if psql_at "$maintenance_url" -c "drop database if exists $target_db with (force)" >/dev/null 2>&1; then
      echo "  dropped:      $target_db"
    else
      echo "  dropped:      FAILED (drop $target_db by hand)"
    fi
  fi
}
on_exit() {
  local status=$?
  drop_target
  if [ "$verdict" -eq 0 ] && [ "$status" -ne 0 ]; then
    echo "restore drill FAILED: an unexpected error (status $status, see above)"
  fi
}
trap on_exit EXIT

# template0: nothing an administrator added to template1 can collide with the archive.
if ! errors=$(psql_at "$maintenance_url" -c "create database $target_db owner $owner template template0" 2>&1); then
  case "$errors" in
    *"already exists"*)
      fail "$EX_CANTCREAT" "the database $target_db already exists: the drill restores only into a new database and has left it untouched" ;;
    *"permission denied"*|*"must be"*)
      fail "$EX_NOPERM" "cannot create $target_db owned by $owner as $connected_as: $(one_line "$errors")" ;;
    *) fail "$EX_SOFTWARE" "cannot create $target_db: $(one_line "$errors")" ;;
  esac
fi
created=1
echo "  target:       created $target_db on $(redact "${url_base%/*}") (owner $owner)"

# 4. The restore: one transaction, stop at the first error, owners and privileges as in the
# archive (they are what keeps the audit log append-only).
started=$(date +%s.%N)
if ! errors=$(pg_restore --no-password --exit-on-error --single-transaction \
    --dbname="$target_url" "$backup" 2>&1); then
  echo "  restore:      FAILED"
  fail "$EX_SOFTWARE" "pg_restore failed (nothing was kept): $(one_line "$errors")"
fi
restored=1
seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "  restore:      ok (pg_restore, one transaction, owners and privileges kept, ${seconds} s)"

failures=()
check() {
  local name="$1" outcome="$2" detail="$3"
  printf '  %-13s %s (%s)\n' "$name:" "$outcome" "$detail"
  [ "$outcome" = "ok" ] || failures+=("$name")
}

# 5. The migrations table against the migrations this build would apply.
declare -A file_checksum=()
max_file=0
for file in "$migrations_dir"/*.sql; do
  [ -e "$file" ] || continue
  base=$(basename "$file")
  [[ "$base" =~ ^([0-9]+)_ ]] || continue
  version=$((10#${BASH_REMATCH[1]}))
  file_checksum[$version]=$(sha384sum "$file" | cut -d' ' -f1)
  [ "$version" -le "$max_file" ] || max_file=$version
done
if ! applied=$(on_target -F ' ' -c \
    "select version, encode(checksum, 'hex'), success from _sqlx_migrations order by version" 2>&1); then
  check migrations FAILED "no readable _sqlx_migrations table: $(one_line "$applied")"
else
  problems=()
  n_applied=0
  max_applied=0
  declare -A seen=()
  while read -r version checksum success; do
    [ -n "$version" ] || continue
    n_applied=$((n_applied + 1))
    seen[$version]=1
    [ "$version" -le "$max_applied" ] || max_applied=$version
    if [ "$success" != "t" ]; then
      problems+=("migration $version did not succeed")
    elif [ -z "${file_checksum[$version]:-}" ]; then
      problems+=("migration $version is not in $migrations_dir")
    elif [ "${file_checksum[$version]}" != "$checksum" ]; then
      problems+=("migration $version differs from its file")
    fi
  done <<<"$applied"
  pending=0
  for version in "${!file_checksum[@]}"; do
    [ -z "${seen[$version]:-}" ] || continue
    if [ "$version" -lt "$max_applied" ]; then
      problems+=("migration $version was never applied")
    else
      pending=$((pending + 1))
    fi
  done
  if [ ${#problems[@]} -gt 0 ]; then
    check migrations FAILED "$(join '; ' "${problems[@]}")"
  elif [ "$n_applied" -eq 0 ]; then
    check migrations FAILED "no migration was ever applied"
  elif [ "$pending" -gt 0 ]; then
    check migrations ok "$n_applied applied, matching $migrations_dir; $pending newer would be applied by carebell migrate"
  else
    check migrations ok "$n_applied applied, all matching $migrations_dir"
  fi
fi

# 6. Row counts of the key tables, and how recent the data is.
counts=()
for table in residents devices calls alarms offers events audit_log device_outbox orders \
    ledger_transactions ledger_entries; do
  if count=$(on_target -c "select count(*) from $table" 2>/dev/null); then
    counts+=("$table=$count")
  else
    counts+=("$table=absent")
  fi
done
echo "  rows:         ${counts[*]}"
newest=$(on_target -F ' | ' -c "
    select coalesce((select max(at)::text from events), 'none'),
           coalesce((select max(received_at)::text from alarms), 'none')" 2>/dev/null || echo "unknown")
echo "  newest:       event ${newest%% | *}, alarm ${newest##* | }"

# 7. The append-only protections, as the application's role would meet them.
append_only_tables=()
for table in audit_log events ledger_transactions ledger_entries; do
  if [ "$(on_target -c "select to_regclass('public.$table') is not null")" = "t" ]; then
    append_only_tables+=("$table")
  fi
done
problems=()
tried=()
as_owner=0
# Runs SQL in a transaction that is rolled back; prints psql's output.
attempt() { on_target -c "begin; $1; rollback;" 2>&1; }
if ! error=$(attempt "set local role $app_role; select 1"); then
  problems+=("cannot switch to $app_role as $connected_as ($(one_line "$error")): connect as the owner or a superuser")
else
  owned=$(on_target -c "
      select (select count(*) from pg_class where relowner = '$app_role'::regrole)
           + (select count(*) from pg_proc where proowner = '$app_role'::regrole)")
  [ "$owned" = "0" ] || problems+=("$app_role owns $owned objects")
  if attempt "set local role $owner; select 1" >/dev/null; then as_owner=1; fi
  for table in "${append_only_tables[@]}"; do
    rights=$(on_target -c "
        select string_agg(p, ',') from unnest(array['UPDATE', 'DELETE', 'TRUNCATE']) p
        where has_table_privilege('$app_role', 'public.$table', p)")
    [ -z "$rights" ] || problems+=("$app_role may $rights $table")
    first_column=$(on_target -c "select quote_ident(attname) from pg_attribute
        where attrelid = 'public.$table'::regclass and attnum = 1")
    for statement in "update $table set $first_column = $first_column where false" \
        "delete from $table where false" "truncate $table"; do
      if error=$(attempt "set local role $app_role; $statement"); then
        problems+=("$app_role could run: $statement")
      elif [[ "$error" != *"permission denied"* ]]; then
        problems+=("$statement failed for another reason: $(one_line "$error")")
      fi
    done
    if error=$(attempt "set local role $app_role; alter table $table disable trigger user"); then
      problems+=("$app_role could disable the triggers of $table")
    elif [[ "$error" != *"must be owner"* ]]; then
      problems+=("disabling the triggers of $table failed for another reason: $(one_line "$error")")
    fi
    # The triggers that refuse changes even to the owner: present and enabled...
    guarded=$(on_target -c "
        select count(*) from pg_trigger t join pg_proc f on f.oid = t.tgfoid
        where t.tgrelid = 'public.$table'::regclass and not t.tgisinternal
          and t.tgenabled <> 'D' and f.proname = 'refuse_change'
          and t.tgtype & 8 <> 0 and t.tgtype & 16 <> 0")
    [ "$guarded" -ge 1 ] || problems+=("no enabled trigger refuses UPDATE and DELETE on $table")
    # ...and firing: the owner updating a row is refused. (Any error refuses it: on tables
    # other than events, refuse_change() currently fails on NEW.kind before it reaches its
    # own "is append-only" message.)
    if [ "$as_owner" -eq 1 ] && [ "$(on_target -c "select exists (select 1 from $table)")" = "t" ]; then
      if attempt "set local role $owner; update $table set $first_column = $first_column
          where ctid = (select ctid from $table limit 1)" >/dev/null; then
        problems+=("the owner could update a row of $table")
      fi
      tried+=("$table")
    fi
  done
  if printf '%s\n' "${append_only_tables[@]}" | grep -qx audit_log; then
    if ! error=$(attempt "set local role $app_role; insert into audit_log (actor, action) values ('restore-drill', 'restore.drill')"); then
      problems+=("$app_role cannot append to audit_log: $(one_line "$error")")
    fi
  fi
  defaults=$(on_target -c "
      select count(*) from pg_default_acl d, aclexplode(d.defaclacl) a
      where a.grantee = '$app_role'::regrole")
  [ "$defaults" != "0" ] || problems+=("no default privileges for $app_role (tables made by later migrations would not be granted)")
fi
if [ ${#append_only_tables[@]} -eq 0 ]; then
  check append-only FAILED "none of audit_log, events, ledger_transactions, ledger_entries is in the backup"
elif [ ${#problems[@]} -gt 0 ]; then
  check append-only FAILED "$(join '; ' "${problems[@]}")"
else
  if [ ${#tried[@]} -gt 0 ]; then
    owner_refused="the owner's update of a row is refused on $(join ', ' "${tried[@]}")"
  elif [ "$as_owner" -eq 0 ]; then
    owner_refused="the owner's update not tried (cannot switch to $owner)"
  else
    owner_refused="no rows to try the owner's update on"
  fi
  check append-only ok "$app_role cannot UPDATE, DELETE or TRUNCATE $(join ', ' "${append_only_tables[@]}"), disable their triggers or own anything; their triggers are enabled; $owner_refused; appending works"
fi

drop_target
verdict=1
if [ ${#failures[@]} -gt 0 ]; then
  [ "$drop_after" -eq 1 ] || echo "  kept:         $target_db, for a look"
  echo "restore drill FAILED: $(join ', ' "${failures[@]}")"
  exit "$EX_CHECK"
fi
[ "$drop_after" -eq 1 ] || echo "  kept:         $target_db (drop it when done, or pass --drop)"
echo "restore drill PASSED: $target_db restored from $(basename "$backup") and checked"
