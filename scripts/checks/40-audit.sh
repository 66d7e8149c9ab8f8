#!/usr/bin/env bash
# Dependency audit with cargo-deny and deny.toml: licences (allowlist), bans (no OpenSSL, one
# crypto provider), sources (crates.io only) always; RustSec advisories when the advisory
# database can be fetched, or against a copy already on this machine. When neither is possible
# the advisory check is skipped and this says so on one line (it never reports a pass it did not run).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_DENY_VERSION=0.20.2
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "40-audit: installing cargo-deny $CARGO_DENY_VERSION (once, into ~/.cargo/bin)"
  cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION" --quiet
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if ! cargo deny --log-level error check --hide-inclusion-graph licenses bans sources >"$out" 2>&1; then
  cat "$out" >&2
  echo "40-audit: FAILED: licences, bans or sources (see deny.toml)" >&2
  exit 1
fi
echo "40-audit: $(tail -n 1 "$out")"

dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
have_copy() { compgen -G "$dbs/advisory-db-*/crates" >/dev/null; }
if timeout 180 cargo deny --log-level error fetch db >"$out" 2>&1; then
  mode=(check)
  how="fetched now"
elif have_copy; then
  mode=(--offline check)
  copy="$(compgen -G "$dbs/advisory-db-*" | head -n 1)"
  when="$(git -C "$copy" log -1 --format=%cs 2>/dev/null || echo "unknown date")"
  how="could not be updated ($(grep -m1 -oE 'fatal: .*|Could not resolve host[^;]*' "$out" || echo "fetch failed")); using the local copy of $when"
else
  why="$(grep -m1 -oE 'Could not resolve host[^;]*|fatal: .*' "$out" || echo "fetch failed")"
  echo "40-audit: advisories: SKIPPED: the RustSec advisory database cannot be fetched from this machine ($why) and there is no local copy; licences, bans and sources were checked"
  exit 0
fi
if ! cargo deny --log-level error "${mode[@]}" --hide-inclusion-graph advisories >"$out" 2>&1; then
  cat "$out" >&2
  echo "40-audit: FAILED: RustSec advisories (database $how)" >&2
  exit 1
fi
echo "40-audit: advisories ok (RustSec database $how)"
