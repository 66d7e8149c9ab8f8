#!/usr/bin/env bash
# Dependency audit with cargo-deny and deny.toml: licences (allowlist), bans (no OpenSSL, one
# crypto provider), sources (crates.io only), and RustSec advisories.
#
# Advisories are checked against the RustSec database snapshot in $REMORA_SHARED/advisory-db
# (a plain copy, see its SNAPSHOT.md; the machines that run this cannot reach the database's git
# host), never fetched. A vulnerability fails the check. Without the snapshot the check fails;
# outside the full suite (REMORA_REQUIRE_CORPUS unset and no CI variable) it tries the live
# database instead, and fails if that cannot be fetched either. It never reports a pass it did not run.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_DENY_VERSION=0.20.2
# Where cargo-deny 0.20 looks for the default database (https://github.com/rustsec/advisory-db)
# under its db-path: "<last url segment>-<xxhash64 of the url>".
DB_DIR_NAME=advisory-db-3157b0e258782691
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "40-audit: installing cargo-deny $CARGO_DENY_VERSION (once, into ~/.cargo/bin)"
  cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION" --quiet
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
out="$tmp/out"
if ! cargo deny --log-level error check --hide-inclusion-graph licenses bans sources >"$out" 2>&1; then
  cat "$out" >&2
  echo "40-audit: FAILED: licences, bans or sources (see deny.toml)" >&2
  exit 1
fi
echo "40-audit: $(tail -n 1 "$out")"

shared="${REMORA_SHARED:-$(cd .. && pwd)/shared}"
snapshot="$shared/advisory-db"
if [ -d "$snapshot/crates" ]; then
  commit="$(sed -n 's/^- Commit: *\([0-9a-f]\{7,\}\).*/\1/p' "$snapshot/SNAPSHOT.md" 2>/dev/null | head -n 1)"
  date="$(sed -n 's/^- Commit date: *\([0-9-]*\).*/\1/p' "$snapshot/SNAPSHOT.md" 2>/dev/null | head -n 1)"
  how="snapshot $snapshot, RustSec commit ${commit:0:12} of ${date:-unknown date}"
  # cargo-deny opens the database with git: a throwaway git copy, at the place it looks for it
  # (db-path in a copy of deny.toml), opened without fetching (--offline).
  db="$tmp/dbs/$DB_DIR_NAME"
  mkdir -p "$tmp/dbs"
  cp -R "$snapshot" "$db"
  git -C "$db" init -q
  git -C "$db" add -A
  git -C "$db" -c user.email=ci@localhost -c user.name=ci -c commit.gpgsign=false commit -qm "RustSec snapshot ${commit:-unknown}"
  sed "/^\[advisories\]/a db-path = \"$tmp/dbs\"" deny.toml >"$tmp/deny.toml"
  grep -q "^db-path = \"$tmp/dbs\"" "$tmp/deny.toml" || { echo "40-audit: FAILED: no [advisories] section in deny.toml" >&2; exit 1; }
  # --offline also keeps `cargo metadata` off the network: the crates must be downloaded.
  cargo fetch --locked --quiet
  mode=(--offline --config "$tmp/deny.toml" check)
  if [ -n "$date" ]; then
    age=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
    [ "$age" -le 90 ] || echo "40-audit: warning: the advisory snapshot is $age days old (RustSec commit of $date); advisories published since are not checked"
  fi
elif [ "${REMORA_REQUIRE_CORPUS:-}" = 1 ] || [ -n "${CI:-}" ]; then
  echo "40-audit: FAILED: the RustSec advisory snapshot is missing: no $snapshot/crates (set REMORA_SHARED to the folder holding advisory-db/); advisories were NOT checked" >&2
  exit 1
elif timeout 180 cargo deny --log-level error fetch db >"$out" 2>&1; then
  mode=(check)
  how="no snapshot at $snapshot; the live database, fetched now"
else
  why="$(grep -m1 -oE 'Could not resolve host[^;]*|fatal: .*' "$out" || echo "fetch failed")"
  echo "40-audit: FAILED: no advisory snapshot at $snapshot and the RustSec database cannot be fetched ($why); advisories were NOT checked" >&2
  exit 1
fi
if ! cargo deny --log-level error "${mode[@]}" --hide-inclusion-graph advisories >"$out" 2>&1; then
  cat "$out" >&2
  echo "40-audit: FAILED: RustSec advisories (database: $how)" >&2
  exit 1
fi
echo "40-audit: advisories ok (database: $how)"
