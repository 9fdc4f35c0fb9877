#!/usr/bin/env bash
# Write the README walk-through's web server image as an OCI image-layout tar, with no
# registry and no internet: one layer made of Debian's busybox-static (/bin/busybox and
# its applet links) and a page at /www/index.html that names the version.
#
#   bash scripts/hello-image.sh VERSION OUT.tar     # e.g. v1 /tmp/hello-v1.tar
#
# The image is named localhost/hello:VERSION (index.json's
# org.opencontainers.image.ref.name); `kith image import OUT.tar` stores it under that
# name. Its default command serves /www with busybox httpd on port 8080.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 VERSION OUT.tar" >&2
    exit 2
fi
version=$1
out=$2
case "$version" in
    "" | *[!A-Za-z0-9_.-]*)
        echo "$0: VERSION must be an image tag (letters, digits, _ . -), not '$version'" >&2
        exit 2
        ;;
esac
busybox=${BUSYBOX:-/bin/busybox}
if ! [ -x "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
    echo "$0: no busybox at $busybox (apt-get install busybox-static)" >&2
    exit 1
fi

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
layout=$work/layout
mkdir -p "$root/bin" "$root/etc" "$root/www" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" \
    "$layout/blobs/sha256"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hello from kith %s\n' "$version" >"$root/www/index.html"

# Same input, same bytes: sorted names, fixed times and owners.
(cd "$root" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=ustar -cf "$work/layer.tar" .)

# Moves FILE into the layout's blobs and prints "DIGEST SIZE".
blob() {
    local hex size
    hex=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$layout/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}

read -r layer_digest layer_size < <(blob "$work/layer.tar")
printf '%s' '{"architecture":"'"$arch"'","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["httpd","-f","-v","-p","8080","-h","/www"],"ExposedPorts":{"8080/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["'"$layer_digest"'"]}}' \
    >"$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'"$config_digest"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"'"$layer_digest"'","size":'"$layer_size"'}]}' \
    >"$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
printf '%s' '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"'"$manifest_digest"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"localhost/hello:'"$version"'"}}]}' \
    >"$layout/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

(cd "$layout" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=ustar -cf "$work/out.tar" oci-layout index.json blobs)
mv "$work/out.tar" "$out"
echo "wrote $out (localhost/hello:$version)"
