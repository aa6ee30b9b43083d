# Shared by deploy/backup.sh and deploy/restore-drill.sh (sourced, not run): exit statuses,
# messages that never show a password, and libpq connection errors mapped to a status. The
# sourcing script defines `fail STATUS MESSAGE...`.
# shellcheck shell=bash disable=SC2034

# sysexits(3)
EX_USAGE=64
EX_DATAERR=65
EX_NOINPUT=66
EX_UNAVAILABLE=69
EX_SOFTWARE=70
EX_CANTCREAT=73
EX_IOERR=74
EX_NOPERM=77

# The URL with its password replaced, for messages.
redact() {
  sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"
}

# The text on one line, runs of spaces folded.
one_line() {
  tr '\n' ' ' <<<"$1" | sed -E 's/ +/ /g; s/ $//'
}

# connection_failure URL MESSAGE MISSING_STATUS MISSING_TEXT: fails with a status and a hint
# for a libpq connection error; MISSING_* say what a missing database means to the caller.
connection_failure() {
  local url="$1" message missing_status="$3" missing_text="$4"
  message=$(one_line "$2")
  case "$message" in
    *'database "'*'" does not exist'*)
      fail "$missing_status" "$missing_text: $message" ;;
    *"password authentication failed"*|*"no pg_hba.conf entry"*|*"role"*"does not exist"*|*"permission denied"*|*"no password supplied"*)
      fail "$EX_NOPERM" "PostgreSQL refused $(redact "$url"): $message" ;;
    *)
      fail "$EX_UNAVAILABLE" "cannot reach PostgreSQL at $(redact "$url"): $message" ;;
  esac
}
