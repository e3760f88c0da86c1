#!/bin/sh
# Builds the images of ../../Dockerfile from binaries built on this machine, with no registry:
# `FROM scratch` plus a root filesystem of the binaries and the libraries they link.
#
#   cargo build --release --example fake_apache && cargo build --release --bin watchdog
#   examples/compose/build-local.sh                      # from target/release
# (two builds, the watchdog alone last, as in the Dockerfile: see there)
#   examples/compose/build-local.sh target/debug         # any cargo output directory
#
# Makes $WATCHDOG_IMAGE (default uptime-watchdog:local) and $DEMO_APP_IMAGE (default
# uptime-watchdog-demo-app:local), both labelled $IMAGE_LABEL (default
# uptime-watchdog.image=local) so they can be found and removed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-$repo/target/release}
watchdog_image=${WATCHDOG_IMAGE:-uptime-watchdog:local}
demo_image=${DEMO_APP_IMAGE:-uptime-watchdog-demo-app:local}
label=${IMAGE_LABEL:-uptime-watchdog.image=local}
for program in "$bin/watchdog" "$bin/examples/fake_apache"; do
    [ -x "$program" ] || { echo "$program is missing: cargo build --release --example fake_apache && cargo build --release --bin watchdog" >&2; exit 1; }
done

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
"$repo/docker/rootfs.sh" "$context/watchdog-rootfs" "$bin/watchdog"
"$repo/docker/rootfs.sh" "$context/demo-rootfs" "$bin/watchdog" "$bin/examples/fake_apache"
# Debug builds carry hundreds of MB of debug info; the images do not need it.
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$context"/*/root/usr/local/bin/*
fi
cp "$here/app-health.toml" "$context/demo-rootfs/root/etc/uptime-watchdog/health.toml"
cp "$repo/docker/Dockerfile.local" "$context/Dockerfile"

# The legacy builder: BuildKit needs the buildx plugin, and `FROM scratch` needs neither.
DOCKER_BUILDKIT=0 docker build -q --label "$label" --target demo-app -t "$demo_image" "$context" >/dev/null
DOCKER_BUILDKIT=0 docker build -q --label "$label" --target watchdog -t "$watchdog_image" "$context" >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$watchdog_image"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$demo_image"
