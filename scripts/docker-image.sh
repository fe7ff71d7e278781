#!/usr/bin/env bash
# Builds the `xnode:latest` image from the Dockerfile's `prebuilt` target around target/release/xnode.
#
# No registry is reachable here, so the runtime base (`debian:bookworm-slim`) cannot be pulled. When it is not
# present locally, this makes an equivalent one from Debian's packages with debootstrap (minbase bookworm, the
# release the host binary was built on, so glibc matches) and tags it, so the Dockerfile is used unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
base="${XNODE_RUNTIME_IMAGE:-debian:bookworm-slim}"
tag="${1:-xnode:latest}"

if ! docker image inspect "$base" >/dev/null 2>&1; then
  echo "==> $base is not available locally; building it with debootstrap" >&2
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "${XNODE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

if [[ ! -x target/release/xnode ]]; then
  cargo build --release --locked --bin xnode
fi
docker build --quiet --target prebuilt --build-arg RUNTIME_IMAGE="$base" -t "$tag" . >/dev/null
echo "$tag"
