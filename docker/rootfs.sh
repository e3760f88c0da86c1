#!/bin/sh
# Assembles a minimal root filesystem in DEST/root for the watchdog's images: the given programs in
# /usr/local/bin, the shared libraries they link (as `ldd` lists them, nothing else), a
# passwd/group with the unprivileged user `watchdog` (65532), and the directory it reads its
# config from. Its state directory is apart, in DEST/state/uptime-watchdog, to be copied to
# /var/lib with the unprivileged owner (COPY --chown owns what it creates, not a directory
# that already exists). No shell, no package manager: the image can run
# the watchdog and nothing else.
#
# Used by the Dockerfile's build stage, and by examples/compose/build-local.sh to make the
# same image from a local binary where no registry is reachable.
#
#   docker/rootfs.sh DEST PROGRAM...
set -eu
state=$1/state/uptime-watchdog
dest=$1/root
shift
mkdir -p "$dest/usr/local/bin" "$dest/etc/uptime-watchdog" "$dest/var/lib" "$dest/tmp" "$state"
chmod 1777 "$dest/tmp"
# A file in it keeps that layer from being empty, which the legacy builder cannot export
# ("layer does not exist").
echo "uptime-watchdog state (counters, incidents, the page outbox)" > "$state/README"
for program in "$@"; do
    install -m 755 "$program" "$dest/usr/local/bin/"
    # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
        mkdir -p "$dest$(dirname "$lib")"
        cp -L "$lib" "$dest$lib"
    done
done
# CA certificates: https probes and webhooks verify against them, and the HTTP client
# refuses to start without any.
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "$certs is missing: install ca-certificates" >&2; exit 1; }
mkdir -p "$dest/etc/ssl/certs"
cp -L "$certs" "$dest/etc/ssl/certs/"
cat > "$dest/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
watchdog:x:65532:65532:uptime-watchdog:/var/lib/uptime-watchdog:/sbin/nologin
PASSWD
cat > "$dest/etc/group" <<'GROUP'
root:x:0:
watchdog:x:65532:
GROUP
