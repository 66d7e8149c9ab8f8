#!/usr/bin/env bash
# Short fuzzing pass: builds every fuzz target (cargo fuzz, nightly) and runs each for
# FUZZ_SECONDS (default 15); any crash fails the check. Longer runs: scripts/fuzz TARGET SECONDS
# (docs/reliability.md has the figures of the long runs). The first build instruments pingora,
# kube and the rest with coverage (several minutes); later runs rebuild only what changed.
# REMORA_SKIP_FUZZ=1 skips the check (and says so).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${FUZZ_SECONDS:-15}"
if [ "${REMORA_SKIP_FUZZ:-}" = 1 ]; then
  echo "30-fuzz: SKIPPED (REMORA_SKIP_FUZZ=1); no fuzz target was built or run"
  exit 0
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "30-fuzz: the nightly toolchain is needed for cargo fuzz (rustup toolchain install nightly)" >&2
  exit 1
fi
mkdir -p target
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "30-fuzz: installing cargo-fuzz (once, into ~/.cargo/bin)"
  cargo install cargo-fuzz --locked --version 0.13.2 --quiet
fi
for crate in webhook init proxy; do
  echo "30-fuzz: building $crate/fuzz"
  cargo +nightly fuzz build --fuzz-dir "$crate/fuzz" -s "${SANITIZER:-none}" --target-dir target/fuzz >/dev/null 2>"target/fuzz-build-$crate.log" || {
    tail -n 40 "target/fuzz-build-$crate.log" >&2
    echo "30-fuzz: building $crate/fuzz failed" >&2
    exit 1
  }
done
start=$SECONDS
for t in $(scripts/fuzz --list); do
  scripts/fuzz "$t" "$secs"
done
echo "30-fuzz: all fuzz targets ran ${secs} s each without a crash ($((SECONDS - start)) s)"
