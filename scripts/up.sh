#!/usr/bin/env bash
# Build kith and run a one-box cluster (the README's first command).
#
#   bash scripts/up.sh [--data-dir DIR] [--listen HOST:PORT] [other `kith up` flags]
#
# Needs the Rust toolchain and libseccomp's development files (the build links libseccomp
# for containers' seccomp filters; installed here with apt-get when missing); state goes to
# /var/lib/kith unless --data-dir says otherwise, and the kubeconfig it prints works with
# any kubectl 1.27+.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep -q "install ok installed"; then
    echo "up.sh: apt-get install libseccomp-dev" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libseccomp-dev >/dev/null
fi
cargo build --release --bin kith
exec "${CARGO_TARGET_DIR:-target}/release/kith" up "$@"
