#!/usr/bin/env bash
# Interleaved A/B benchmark of two revisions of asyncify-pool in one process.
#
#   bash benches/ab.sh [BASE_REV] [NEW_REV]      # defaults: 04c4150 HEAD
#
# NEW_REV (or BASE_REV) may be WORKTREE: the current work tree of this repository, uncommitted
# changes included. Each revision is copied into a scratch dir (AB_DIR, default
# ${TMPDIR:-/tmp}/asyncify-ab) as a plain library renamed asyncify-pool-before / -after;
# a harness crate there (source: benches/ab_harness/harness.rs) depends on both, is built with
# --release under its own CARGO_TARGET_DIR, and run. AB_ROUNDS (default 15) and
# ASYNCIFY_BENCH_CALLS (default 100000) pass through; AB_OPTIONS=1 adds the groups through a
# program with a deadline, with a rate limit, and with every option (both revisions must have
# them); AB_TRACING=1 adds, last, the call groups under a global tracing subscriber, outside
# and inside a span (AB_TRACING=only: only those); AB_BOUNDED=1 adds bursts on pools with a
# bounded queue (AB_CAPACITY, default 16; AB_BOUNDED=only: only those). Nothing in this
# repository is changed.
set -euo pipefail

BASE_REV=${1:-04c4150}
NEW_REV=${2:-HEAD}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AB_DIR=${AB_DIR:-${TMPDIR:-/tmp}/asyncify-ab}
HARNESS_SRC="$REPO/benches/ab_harness/harness.rs"

[[ -f "$HARNESS_SRC" ]] || { echo "ab.sh: missing $HARNESS_SRC" >&2; exit 1; }
mkdir -p "$AB_DIR"

# Files of the library a plain dependency build needs (those that exist at the revision).
LIB_PATHS=(Cargo.toml build.rs src README.md LICENSE LICENSE-MIT LICENSE-APACHE)

# export REV DEST: the library at REV (or the work tree) into DEST, nothing else.
export_rev() {
    local rev=$1 dest=$2 p present=()
    rm -rf "$dest"
    mkdir -p "$dest"
    if [[ $rev == WORKTREE ]]; then
        for p in "${LIB_PATHS[@]}"; do
            if [[ -e "$REPO/$p" ]]; then cp -R "$REPO/$p" "$dest/"; fi
        done
    else
        git -C "$REPO" rev-parse --verify --quiet "$rev^{commit}" >/dev/null \
            || { echo "ab.sh: unknown revision $rev" >&2; exit 1; }
        for p in "${LIB_PATHS[@]}"; do
            git -C "$REPO" cat-file -e "$rev:$p" 2>/dev/null && present+=("$p")
        done
        git -C "$REPO" archive --format=tar "$rev" -- "${present[@]}" | tar -x -C "$dest"
    fi
}

# rename_manifest FILE NAME: set the package name; drop what a plain dependency does not need
# ([[bench]], [[test]], [[example]], [dev-dependencies] in any form, [profile.*], [workspace]).
rename_manifest() {
    local file=$1 name=$2
    awk -v name="$name" '
        /^[[:space:]]*\[/ {
            section = $0
            gsub(/[[:space:]]/, "", section)
            skip = (section ~ /^\[\[(bench|test|example)\]\]$/ ||
                    section ~ /dev-dependencies\]$/ ||
                    section ~ /^\[profile[.\]]/ ||
                    section ~ /^\[workspace[.\]]/)
            in_package = (section == "[package]")
        }
        skip { next }
        in_package && /^[[:space:]]*name[[:space:]]*=/ { print "name = \"" name "\""; next }
        in_package && /^[[:space:]]*auto(benches|tests|examples|bins)[[:space:]]*=/ { next }
        { print }
    ' "$file" >"$file.new"
    mv "$file.new" "$file"
    # No targets but the library, whatever directories are around.
    sed -i '/^\[package\]/a autobenches = false\nautotests = false\nautoexamples = false\nautobins = false' "$file"
}

label() {
    if [[ $1 == WORKTREE ]]; then
        echo "WORKTREE (on $(git -C "$REPO" rev-parse --short HEAD), $(git -C "$REPO" status --porcelain -- src Cargo.toml | wc -l) changed paths in src/Cargo.toml)"
    else
        echo "$1 ($(git -C "$REPO" rev-parse --short "$1^{commit}"))"
    fi
}

export_rev "$BASE_REV" "$AB_DIR/before"
export_rev "$NEW_REV" "$AB_DIR/after"
rename_manifest "$AB_DIR/before/Cargo.toml" asyncify-pool-before
rename_manifest "$AB_DIR/after/Cargo.toml" asyncify-pool-after

HARNESS="$AB_DIR/harness"
mkdir -p "$HARNESS/src"
cp "$HARNESS_SRC" "$HARNESS/src/main.rs"
cp "$REPO/benches/floor.rs" "$HARNESS/src/floor.rs"
cp "$REPO/benches/stats.rs" "$HARNESS/src/stats.rs"
cat >"$HARNESS/Cargo.toml" <<'EOF'
[package]
name = "asyncify-ab"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
before = { package = "asyncify-pool-before", path = "../before" }
after = { package = "asyncify-pool-after", path = "../after" }
tokio = { version = "1.40", features = ["rt", "rt-multi-thread"] }
crossbeam-channel = "0.5.15"
oneshot = { version = "0.2.1", default-features = false, features = ["std", "async"] }
tracing = "0.1"
tracing-subscriber = { version = "0.3", default-features = false, features = ["registry"] }

[features]
options = []

[profile.release]
debug = "line-tables-only"

# Its own workspace: never part of one above the scratch dir.
[workspace]
EOF
# Same dependency versions as the repository resolved (cargo adds the two renamed packages).
[[ -f "$HARNESS/Cargo.lock" ]] || cp "$REPO/Cargo.lock" "$HARNESS/Cargo.lock" 2>/dev/null || true

export CARGO_TARGET_DIR="$AB_DIR/target"
echo "ab.sh: before=$(label "$BASE_REV") after=$(label "$NEW_REV"); building in $AB_DIR" >&2
FEATURES=()
[[ ${AB_OPTIONS:-0} == 1 ]] && FEATURES=(--features options)
cargo build --release --quiet --manifest-path "$HARNESS/Cargo.toml" "${FEATURES[@]}"

AB_BASE_LABEL=$(label "$BASE_REV") AB_NEW_LABEL=$(label "$NEW_REV") \
    AB_ROUNDS=${AB_ROUNDS:-15} AB_TRACING=${AB_TRACING:-0} ASYNCIFY_BENCH_CALLS=${ASYNCIFY_BENCH_CALLS:-100000} \
    "$CARGO_TARGET_DIR/release/asyncify-ab"
