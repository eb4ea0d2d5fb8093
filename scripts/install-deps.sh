#!/usr/bin/env bash
# Installs what building and testing Wharf needs on a fresh Debian machine:
# the real upstream registry and clients the end-to-end tests drive, and the
# wasm32 target the shared core is checked for. Skips what is already there.
set -euo pipefail

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v containerd >/dev/null || need+=(containerd)
command -v podman >/dev/null || need+=(podman)
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v curl >/dev/null || need+=(curl)
# The benchmark's hashing reference (bench/, issue 6).
command -v openssl >/dev/null || need+=(openssl)
# The benchmark's warm-manifest limit and load generator (bench item 8,
# issue 17): nginx serving the same bytes as a static file, driven by wrk.
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
# `ip netns` for the hostile-upstream test's network namespace (issue 12).
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || command -v ip >/dev/null || need+=(iproute2)
# The status page is tested in headless Chromium (tests/tests/status_page.rs).
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

# --- edge ---
# The Worker's build tools (issue 4). worker-build does not look on PATH and
# would otherwise download wasm-bindgen/esbuild/wasm-opt from the internet;
# scripts/edge-build.sh points it at these through WASM_BINDGEN_BIN,
# ESBUILD_BIN and WASM_OPT_BIN. Compiling worker-build and wasm-bindgen-cli
# costs ~20 CPU-minutes, so each is skipped when already installed at the
# right version. wasm-bindgen-cli must equal the wasm-bindgen in Cargo.lock
# (the generated glue and the library must agree); no --locked: its own lock
# file pins crates that need a newer rustc.
edge_root="$(cd "$(dirname "$0")/.." && pwd)"
command -v node >/dev/null && command -v npm >/dev/null || {
    echo "installing: nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
}
wasm_bindgen_version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$edge_root/Cargo.lock")"
installed="$(cargo install --list)"
if ! grep -qx "wasm-bindgen-cli v${wasm_bindgen_version}:" <<<"$installed"; then
    echo "installing wasm-bindgen-cli ${wasm_bindgen_version} (matches Cargo.lock; takes a while)"
    cargo install wasm-bindgen-cli --version "=${wasm_bindgen_version}" --force --quiet
fi
if ! grep -qE '^worker-build v0\.8\.[0-9]+:' <<<"$installed"; then
    echo "installing worker-build 0.8 (takes a while)"
    cargo install worker-build --version '^0.8' --force --quiet
fi
# wrangler (+ workerd), esbuild and binaryen, exactly as package-lock.json pins them.
if ! (cd "$edge_root" && npm ls --depth=0 >/dev/null 2>&1); then
    (cd "$edge_root" && npm ci --no-audit --no-fund --loglevel=error)
fi
# --- end edge ---

# --- garage ---
# The distributed object store of the multi-region tests (issue 5), built
# from crates.io once and cached (scripts/install-garage.sh says where and
# what it costs). The tests find it through GARAGE_BIN or the same cache.
scripts_dir="$(cd "$(dirname "$0")" && pwd)"
"$scripts_dir/install-garage.sh" >/dev/null
# --- end garage ---
