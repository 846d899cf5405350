#!/bin/sh
# Runs the mixed-version tests (tests/tests/upgrade.rs) with the nodes of "this
# release" built from an earlier commit or release tag instead of this tree's
# defaults: the check to run before a release, against the previous one.
#
#   tests/upgrade-from.sh v0.1.0          # or any commit
#
# The earlier build goes to $PREVIOUS_TARGET_DIR (default: a temporary directory,
# which means a full build of it). Never give it this tree's target directory: Cargo
# would mix the two builds' workspace crates, which share names and versions.
set -eu
rev=${1:?usage: tests/upgrade-from.sh GIT_REV}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
cleanup() {
    git -C "$root" worktree remove --force "$work/src" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
git -C "$root" worktree add --quiet --detach "$work/src" "$rev"
target=${PREVIOUS_TARGET_DIR:-$work/target}
CARGO_TARGET_DIR="$target" cargo build --quiet --manifest-path "$work/src/Cargo.toml" -p vigil --bin vigil
cp "$target/debug/vigil" "$work/vigil-previous"
"$work/vigil-previous" --version
cd "$root"
VIGIL_PREVIOUS_BIN="$work/vigil-previous" cargo test -p vigil-tests --test upgrade
