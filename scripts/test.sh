#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (run as root):
#   scripts/test.sh
#
# 1. installs and prepares every real server the tests use (scripts/test-deps.sh:
#    Postfix with hash/lmdb/cdb maps, and Exim extracted beside it);
# 2. checks formatting and lints (cargo fmt --check, clippy -D warnings);
# 3. runs every test with the real-MTA tests switched on. Each test starts its own
#    private Postfix on a free 127.0.0.1 port and stops it when done;
# 4. builds the .deb and .rpm and tests the .deb on this machine
#    (scripts/package-test.sh: installs, runs and purges it).
#
# `cargo test` alone also works: the real-MTA tests then print SKIPPED and why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$(date +%s)
echo "==> installing test dependencies" >&2
eval "$(scripts/test-deps.sh)"

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features kerberos --quiet -- -D warnings

echo "==> cargo test (real Postfix and Exim enabled)" >&2
cargo test --all-targets --features kerberos
cargo test --doc --quiet

echo "==> the Debian package: build, lintian, install, run, remove, purge" >&2
scripts/package-test.sh

echo "==> all tests passed in $(( $(date +%s) - started )) s" >&2
