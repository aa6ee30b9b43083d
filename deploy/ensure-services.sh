#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis are running on 127.0.0.1 and that the `carebell` database role
# exists. Installs them from Debian's packages when missing. Safe to run again and again: it
# changes nothing that is already in place.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo "carebell: installing $* from Debian's packages" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  if pg_up; then return; fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    as_root pg_createcluster "$version" main >/dev/null
  fi
  echo "carebell: starting PostgreSQL $version" >&2
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_up && return; sleep 1; done
  echo "carebell: PostgreSQL did not come up on $PG_HOST:$PG_PORT" >&2
  exit 1
}

# psql as a superuser: over TCP as postgres when that is trusted, else over the socket as the
# postgres system user (peer authentication, Debian's default).
psql_admin() {
  if psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tA "$@"
  else
    as_root runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -tA "$@"
  fi
}

ensure_role() {
  if [ "$(psql_admin -c "select 1 from pg_roles where rolname = 'carebell'")" != "1" ]; then
    echo "carebell: creating the carebell database role" >&2
    psql_admin -c "create role carebell login createdb password 'carebell'" >/dev/null
  fi
  # The application's own role: it reads and writes data but owns nothing, and cannot alter
  # the append-only audit log (see docs/security.md). The owner may switch to it (SET ROLE).
  if [ "$(psql_admin -c "select 1 from pg_roles where rolname = 'carebell_app'")" != "1" ]; then
    echo "carebell: creating the carebell_app database role" >&2
    psql_admin -c "create role carebell_app login password 'carebell_app'" >/dev/null
  fi
  if [ "$(psql_admin -c "select 1 from pg_auth_members m join pg_roles r on r.oid = m.roleid join pg_roles u on u.oid = m.member where r.rolname = 'carebell_app' and u.rolname = 'carebell'")" != "1" ]; then
    psql_admin -c "grant carebell_app to carebell" >/dev/null
  fi
}

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null
  fi
}

ensure_redis() {
  if redis_up; then return; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
  fi
  if redis_up; then return; fi
  echo "carebell: starting Redis" >&2
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/carebell.log
  for _ in $(seq 1 30); do redis_up && return; sleep 1; done
  echo "carebell: Redis did not come up on 127.0.0.1:$REDIS_PORT" >&2
  exit 1
}

ensure_postgres
ensure_role
ensure_redis
