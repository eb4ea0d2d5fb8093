#!/usr/bin/env bash
# Installs Garage 2.5.0 — the distributed object store of the multi-region
# tests (tests/tests/garage_store.rs, geo_regions.rs) and of infra/garage —
# into a cache directory, and prints the binary's path on its last line.
#
#   scripts/install-garage.sh            # → $WHARF_TOOLS/garage/bin/garage
#
# WHARF_TOOLS defaults to $CARGO_TARGET_DIR/wharf-tools when CARGO_TARGET_DIR
# is set (CI keeps that directory between runs), else ~/.cache/wharf-tools.
# Skipped when the cached binary is already 2.5.0.
#
# Cost on a fresh 2-core machine: ~7.5 min wall (12.3 CPU-min), measured
# here. That is with only the features the tests use (sqlite metadata, no
# lmdb/k2v/metrics) and a cheaper release profile (opt-level 1, no LTO, 16
# codegen units; the published profile's fat LTO alone more than doubles
# it). It runs before the workspace build: on 2 cores a parallel build only
# slows both down.
set -euo pipefail

version=2.5.0
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    default_tools="$CARGO_TARGET_DIR/wharf-tools"
else
    default_tools="$HOME/.cache/wharf-tools"
fi
tools="${WHARF_TOOLS:-$default_tools}"
bin="$tools/garage/bin/garage"

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "cargo:$version"; then
    echo "$bin"
    exit 0
fi
echo "installing garage $version into $tools/garage (~8 min on 2 cores; cached afterwards)" >&2
started=$(date +%s)
mkdir -p "$tools"
CARGO_PROFILE_RELEASE_LTO=false \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_TARGET_DIR="$tools/garage-target" \
    cargo install "garage@$version" --locked --quiet --force \
        --no-default-features --features bundled-libs,sqlite \
        --root "$tools/garage" >&2
echo "garage $version built in $(( $(date +%s) - started )) s" >&2
# The build directory is only needed for an upgrade; keep the disk free.
rm -rf "$tools/garage-target"
echo "$bin"
