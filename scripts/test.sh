#!/usr/bin/env bash
# The project's test command (see README.md):
#
#   bash scripts/test.sh [extra cargo-nextest arguments, e.g. a test filter]
#
# 1. installs the test tools (pinned kubectl 1.30/1.33, helm) with install-test-deps.sh;
# 2. builds the `kith` binary the e2e tests spawn (found through KITH_BIN);
# 3. runs every test of the workspace with cargo-nextest.
# Tests use the dev profile: it builds several times faster than the release profile
# (thin LTO) on a 2-core machine, and no test measures speed — scripts/bench.sh does, on
# a release build.
# Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/install-test-deps.sh

tools=${KITH_TOOLS_DIR:-/opt/kith-tools}/bin
export KITH_KUBECTL_1_30=${KITH_KUBECTL_1_30:-$tools/kubectl-1.30}
export KITH_KUBECTL_1_33=${KITH_KUBECTL_1_33:-$tools/kubectl-1.33}
export KITH_HELM_3=${KITH_HELM_3:-$tools/helm-3}
export KITH_HELM_4=${KITH_HELM_4:-$tools/helm-4}

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi

cargo build --bin kith
export KITH_BIN=${KITH_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/kith}
if [[ ! -x $KITH_BIN ]]; then
    echo "test.sh: no kith binary at $KITH_BIN" >&2
    exit 1
fi

# nextest runs each test in its own process; every e2e test starts its own kith on a
# free loopback port, so tests run in parallel safely.
cargo nextest run --workspace --no-fail-fast "$@"
