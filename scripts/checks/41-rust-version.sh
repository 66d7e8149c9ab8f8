#!/usr/bin/env bash
# rust-version in Cargo.toml must be the oldest Rust every dependency builds with: the highest
# `rust-version` among the packages resolved for the platforms remora ships for (deny.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
declared="$(sed -n 's/^rust-version = "\([0-9.]*\)"/\1/p' Cargo.toml | head -n 1)"
for platform in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  cargo metadata --locked --format-version 1 --filter-platform "$platform"
done | python3 -c '
import json, sys
declared = sys.argv[1]
key = lambda v: tuple(int(x) for x in v.split("."))
top = None
for line in sys.stdin:
    m = json.loads(line)
    ids = {n["id"] for n in m["resolve"]["nodes"]}
    for p in m["packages"]:
        rv = p.get("rust_version")
        if p["id"] in ids and rv and (top is None or key(rv) > key(top[0])):
            top = (rv, "%s %s" % (p["name"], p["version"]))
if top is None:
    sys.exit("41-rust-version: no package declares a rust-version")
need, who = top
if key(need) > key(declared):
    sys.exit("41-rust-version: FAILED: Cargo.toml says rust-version %s but %s needs %s; raise it (and the README line)" % (declared, who, need))
print("41-rust-version: rust-version %s; the highest in the dependency tree is %s (%s)" % (declared, need, who))
' "$declared"
