#!/usr/bin/env bash
# Runs every cargo-fuzz target in tests/fuzz for SECONDS each (default 10), starting from the
# committed seeds in tests/fuzz/seeds/<target>. Installs the nightly toolchain and cargo-fuzz
# when missing. New corpus entries go to ~/.cache/carebell-fuzz-corpus, never into the clone; a
# crash leaves its input in tests/fuzz/artifacts/<target>/ and fails the run.
#
#   ./deploy/fuzz.sh            # 10 s per target (what ./deploy/test.sh runs)
#   ./deploy/fuzz.sh 3600       # the longer run (docs/security.md)
#   ./deploy/fuzz.sh 60 envelope
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(envelope websocket_handshake json_requests stream_queries routing_rules settings)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "carebell: installing the nightly toolchain for cargo-fuzz" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "carebell: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# Instrumented builds are kept apart from the ordinary ones.
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/carebell-fuzz-target}"
corpus_root="${CAREBELL_FUZZ_CORPUS:-$HOME/.cache/carebell-fuzz-corpus}"

# One build for all targets (address sanitizer off: the code is safe Rust, and the short run
# is about reaching code, not about the sanitizer's overhead).
cargo +nightly fuzz build --fuzz-dir tests/fuzz --sanitizer none

failed=()
for target in "${targets[@]}"; do
  mkdir -p "$corpus_root/$target"
  echo "carebell: fuzzing $target for ${seconds}s" >&2
  if ! cargo +nightly fuzz run --fuzz-dir tests/fuzz --sanitizer none "$target" \
      "$corpus_root/$target" "tests/fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      2>"$corpus_root/$target.log"; then
    tail -n 40 "$corpus_root/$target.log" >&2
    failed+=("$target")
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$corpus_root/$target.log" \
      | sed "s/^/carebell: $target: /" >&2 || true
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "carebell: fuzzing found problems in: ${failed[*]} (inputs in tests/fuzz/artifacts/)" >&2
  exit 1
fi
echo "carebell: fuzzing passed: ${targets[*]} (${seconds}s each)" >&2
