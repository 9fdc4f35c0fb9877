#!/usr/bin/env bash
# Build kith and run a one-box cluster (the README's first command).
#
#   bash scripts/up.sh [--data-dir DIR] [--listen HOST:PORT] [other `kith up` flags]
#
# Needs only the Rust toolchain; state goes to /var/lib/kith unless --data-dir says
# otherwise, and the kubeconfig it prints works with any kubectl 1.27+.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin kith
exec "${CARGO_TARGET_DIR:-target}/release/kith" up "$@"
