#!/usr/bin/env bash
# Builds the georeg container image FROM scratch: the Docker engine on these
# machines can pull nothing, so the image holds only our binary, every shared
# library it loads (found with ldd), the glibc NSS modules that resolve peer
# host names (us-east, ap-south, ...) and a few files under /etc.
#
#   deploy/build-image.sh [TAG]        (default georeg:dev; GEOREG_BIN=... to pick a binary)
#
# The root file system is staged under build/image-root and is the build context.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tag="${1:-${GEOREG_IMAGE:-georeg:dev}}"
bin="${GEOREG_BIN:-$root/build/georeg}"
rootfs="$root/build/image-root"

[ -x "$bin" ] || { echo "build-image: $bin missing; run make" >&2; exit 1; }

rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/local/bin,etc/georeg/tls,var/lib/georeg,tmp}
chmod 1777 "$rootfs/tmp"
install -m 0755 "$bin" "$rootfs/usr/local/bin/georeg"

# copy_lib PATH: the file (symlinks followed) at the same path inside the rootfs
copy_lib() {
    local src="$1"
    [ -e "$src" ] || { echo "build-image: $src not found" >&2; exit 1; }
    mkdir -p "$rootfs$(dirname "$src")"
    cp -L "$src" "$rootfs$src"
}

# deps_of FILE: absolute paths of the shared objects FILE loads, the loader included
deps_of() {
    ldd "$1" | awk '
        /=> not found/ { print "MISSING " $1; next }
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }'
}

libdir=/lib/x86_64-linux-gnu
nss=()
for f in libnss_dns.so.2 libnss_files.so.2 libresolv.so.2; do
    nss+=("$libdir/$f")
done
libs=$( { deps_of "$bin"; for f in "${nss[@]}"; do echo "$f"; deps_of "$f"; done; } | sort -u)
if grep -q '^MISSING' <<<"$libs"; then
    echo "build-image: unresolved libraries:" >&2
    grep '^MISSING' <<<"$libs" >&2
    exit 1
fi
for l in $libs; do copy_lib "$l"; done

# host names: /etc/hosts first, then DNS (Docker's embedded resolver answers for
# service names; Docker mounts /etc/hosts and /etc/resolv.conf into the container)
cat > "$rootfs/etc/nsswitch.conf" <<'NSS'
passwd:   files
group:    files
hosts:    files dns
networks: files
services: files
NSS
printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' \
    > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
# CA bundle for outbound HTTPS (webhooks, import), when the host has one
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi

# a smoke test of the staged tree before Docker sees it (needs root for chroot)
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
    chroot "$rootfs" /usr/local/bin/georeg version >/dev/null ||
        { echo "build-image: staged binary does not run inside $rootfs" >&2; exit 1; }
fi

version="$("$bin" version 2>/dev/null | awk '{print $2}')"
revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "build-image: $(du -sh "$rootfs" | cut -f1) staged in $rootfs ($(wc -w <<<"$libs") libraries)"
# The legacy builder needs no frontend image (BuildKit with a "# syntax=" line
# would try to pull one); its deprecation notice is shown only on failure.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build \
    --label "org.opencontainers.image.version=${version:-dev}" \
    --label "org.opencontainers.image.revision=$revision" \
    -f "$root/deploy/Dockerfile" -t "$tag" "$rootfs" >"$log" 2>&1; then
    cat "$log" >&2
    echo "build-image: docker build failed" >&2
    exit 1
fi
echo "build-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
