#!/usr/bin/env bash
# Builds the `xnode:latest` image from the Dockerfile's `prebuilt` target around a host-built binary, for hosts that
# reach no image registry (`docker compose up` would have to pull rust and debian images).
#
#   scripts/docker-image.sh [TAG]      then: docker compose up --no-build   (or: docker-compose up --no-build)
#
# The binary is `cargo build --profile dist` (stripped), found under $CARGO_TARGET_DIR (default ./target). The
# runtime base is `debian:bookworm-slim` when that image is already present locally; otherwise one is made from
# Debian's packages with debootstrap (minbase bookworm, the release the host binary was built on, so glibc
# matches) and tagged `xnode-base:bookworm`, never with an official image's name. XNODE_RUNTIME_IMAGE picks
# another base.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-xnode:latest}"
target_dir="${CARGO_TARGET_DIR:-target}"

if [[ -n "${XNODE_RUNTIME_IMAGE:-}" ]]; then
  base="$XNODE_RUNTIME_IMAGE"
elif docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  base="debian:bookworm-slim"
else
  base="xnode-base:bookworm"
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [[ "$base" != "xnode-base:bookworm" ]]; then
    echo "error: $base is not available locally and no registry is assumed; unset XNODE_RUNTIME_IMAGE" >&2
    exit 1
  fi
  echo "==> building $base with debootstrap (no registry needed)" >&2
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "${XNODE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  # Nothing the node needs at run time: package caches, documentation, locales.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

binary="$target_dir/dist/xnode"
if [[ ! -x "$binary" || -n "$(find src internal Cargo.toml Cargo.lock -newer "$binary" -print -quit 2>/dev/null)" ]]; then
  echo "==> cargo build --profile dist (into $target_dir)" >&2
  cargo build --profile dist --locked --bin xnode
fi

# A small build context: the Dockerfile and the binary only (not the repository and its target directory).
context="$(mktemp -d)"
trap 'rm -rf "$context" "${rootfs:-}"' EXIT
mkdir -p "$context/target/dist"
cp Dockerfile "$context/"
cp "$binary" "$context/target/dist/xnode"
docker build --quiet --target prebuilt --build-arg RUNTIME_IMAGE="$base" -t "$tag" "$context" >/dev/null
echo "$tag"
