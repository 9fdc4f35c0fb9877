#!/usr/bin/env bash
# The project's bench command:
#
#   bash scripts/bench.sh [--quick] [kith-bench arguments, e.g. --secs 10 --no-etcd]
#
# 1. installs etcd 3.4 (Debian's etcd-server) for the baseline if /usr/bin/etcd is missing,
#    and what the tests install (scripts/install-test-deps.sh: libseccomp-dev for the build,
#    the registry, busybox, runc, iptables for the link emulator);
# 2. builds the release `kith` and `kith-bench` binaries (same package selection as
#    scripts/test.sh, so the two share one build);
# 3. runs kith-bench, which starts kith (and etcd) on 127.0.0.1 with temporary data
#    directories and prints one `BENCH {json}` line per figure on stdout.
#
# --quick: 5 s throughput phases and shorter settling, for checking that it works.
# Everything stops by itself; a full run takes about 10 minutes after the build, of which
# the region bench takes about 7 (about 1 with --quick).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

etcd=${KITH_ETCD:-/usr/bin/etcd}
if [[ ! -x $etcd ]]; then
    echo "bench.sh: installing etcd-server (baseline)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq etcd-server >/dev/null
    # Debian's package would start a system etcd on 127.0.0.1:2379 where systemd runs; the
    # bench starts its own on free ports, so that one is harmless but not needed.
fi
if [[ ! -x $etcd ]]; then
    echo "bench.sh: no etcd at $etcd after installing etcd-server; running without baseline" >&2
    set -- "$@" --no-etcd
fi
export KITH_ETCD=$etcd
# What the benches run besides kith, as the tests do: libseccomp-dev (the build links it),
# docker-registry, busybox-static and runc (the agent bench), iptables (the region bench's
# link emulator where the kernel has no netem), kubectl.
bash scripts/install-test-deps.sh

cargo build --release --bin kith --bin kith-bench
target=${CARGO_TARGET_DIR:-$root/target}
export KITH_BIN=${KITH_BIN:-$target/release/kith}
cargo build --release --bin kith-sched-bench && "$target/release/kith-sched-bench"  # scheduler place+assume figure, no server
cargo build --release --bin kith-metrics-bench && "$target/release/kith-metrics-bench"  # one /metrics scrape of a box with 1,000 objects
cargo build --release --bin kith-agent-bench && "$target/release/kith-agent-bench"  # pods vs runc, 50 MiB pull, memory, 100-replica Deployment (root)
region_args=(); for a in "$@"; do case $a in --quick|--no-etcd) region_args+=("$a");; esac; done
cargo build --release --bin kith-region-bench && "$target/release/kith-region-bench" "${region_args[@]}"  # 3-box region vs 3-member etcd, failover, leader changes (root; ~7 min, ~1 min with --quick)

exec "$target/release/kith-bench" "$@"
