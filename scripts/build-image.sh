#!/usr/bin/env bash
# Builds the container image muster:dev FROM scratch, with no base image and
# no registry: nothing is pulled.
#
#   1. cargo build --release --locked --bin muster (and --bin musterctl when
#      the workspace has that binary)
#   2. stage a build context under target/image/: the binaries (stripped
#      copies), exactly the shared libraries `ldd` lists for them and the
#      dynamic loader, each at the path the loader looks it up by, plus a
#      minimal /etc/passwd and /etc/group for the image's user (65532)
#   3. docker build docker/Dockerfile, target `checked` (a HEALTHCHECK running
#      /musterctl) when musterctl is in the image, `plain` otherwise
#
# Idempotent: the context is rebuilt from scratch on every run and docker's
# layer cache makes an unchanged rebuild a no-op. Bounded: cargo and docker
# each run under `timeout`.
#
# Environment:
#   MUSTER_IMAGE            image name (default muster:dev)
#   MUSTER_IMAGE_FEATURES   cargo features of muster-cli to build with, for
#                           test images only (e.g. fault-injection, which the
#                           fault suite's breakage check uses)
#   MUSTER_BUILD_TIMEOUT    seconds for cargo build (default 2400)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${MUSTER_IMAGE:-muster:dev}
build_timeout=${MUSTER_BUILD_TIMEOUT:-2400}
context=target/image

for tool in cargo docker ldd jq; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is required" >&2; exit 1; }
done

# Which binaries exist: muster always, musterctl once it is written.
bins=(muster)
if cargo metadata --no-deps --format-version 1 --locked 2>/dev/null |
    jq -e '[.packages[].targets[] | select(.kind == ["bin"]) | .name] | index("musterctl")' >/dev/null; then
    bins+=(musterctl)
fi
echo "build-image: building ${bins[*]} (release)" >&2
features=()
if [ -n "${MUSTER_IMAGE_FEATURES:-}" ]; then
    features=(--features "$(sed 's/[^ ,]\+/muster-cli\/&/g' <<<"$MUSTER_IMAGE_FEATURES")")
    echo "build-image: with features ${features[1]} (a test image)" >&2
fi
timeout "$build_timeout" cargo build --release --locked "${features[@]}" \
    $(printf -- '--bin %s ' "${bins[@]}")

rm -rf "$context"
mkdir -p "$context/rootfs/etc" "$context/data"
for bin in "${bins[@]}"; do
    cp "target/release/$bin" "$context/rootfs/$bin"
    strip "$context/rootfs/$bin" 2>/dev/null || true
done

# Every library ldd resolves, and the loader, copied (symlinks followed) to
# the path ldd names. The vDSO (no path) comes from the kernel.
libs=$(for bin in "${bins[@]}"; do ldd "target/release/$bin"; done |
    awk '/=> \// { print $3; next } /^[[:space:]]*\// { print $1 }' | sort -u)
if grep -q "not found" < <(for bin in "${bins[@]}"; do ldd "target/release/$bin"; done); then
    echo "build-image: ldd cannot resolve a library:" >&2
    for bin in "${bins[@]}"; do ldd "target/release/$bin"; done >&2
    exit 1
fi
for lib in $libs; do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
done
printf 'root:x:0:0:root:/:/nonexistent\nmuster:x:65532:65532:muster:/data:/nonexistent\n' \
    >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nmuster:x:65532:\n' >"$context/rootfs/etc/group"
cp docker/Dockerfile "$context/Dockerfile"

target=plain
[[ " ${bins[*]} " == *" musterctl "* ]] && target=checked
echo "build-image: docker build $image (target $target) from:" >&2
(cd "$context" && find rootfs -type f | sort | sed 's/^/  /') >&2

# The classic builder: no buildx here, and FROM scratch pulls nothing.
DOCKER_BUILDKIT=0 timeout 600 docker build --quiet --target "$target" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$image" "$context" >/dev/null
docker image inspect "$image" --format 'build-image: {{index .RepoTags 0}} {{.Id}} {{.Size}} bytes' >&2
