#!/usr/bin/env bash
# Builds the Worker bundle (edge/build/) with worker-build, offline: every tool
# comes from scripts/install-deps.sh (cargo install, npm ci), none is
# downloaded. wrangler.toml's [build] runs this; so does scripts/test.sh.
#
#   WASM_BINDGEN_BIN  wasm-bindgen-cli at exactly the version in Cargo.lock
#   ESBUILD_BIN       esbuild from node_modules (package-lock.json)
#   WASM_OPT_BIN      binaryen's wasm-opt from node_modules (Debian's is too old)
#
# The workspace's [profile.release] serves the origin (speed); the Worker is
# tuned for size through CARGO_PROFILE_RELEASE_* for this build only (it builds
# for wasm32 into its own target subdirectory, so nothing else is rebuilt).
# Extra arguments go to worker-build (e.g. --no-opt).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

tool() {
    if [ -x "$1" ]; then echo "$1"; return; fi
    echo "edge/build.sh: $1 is missing: run scripts/install-deps.sh" >&2
    exit 1
}
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(tool "$cargo_bin/wasm-bindgen")}"
export ESBUILD_BIN="${ESBUILD_BIN:-$(tool "$root/node_modules/.bin/esbuild")}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$(tool "$root/node_modules/.bin/wasm-opt")}"
worker_build="$(command -v worker-build || tool "$cargo_bin/worker-build")"

export CARGO_PROFILE_RELEASE_OPT_LEVEL=z
export CARGO_PROFILE_RELEASE_LTO=fat
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_STRIP=debuginfo

cd "$root/edge"
start=$(date +%s)
if [ -n "${WHARF_EDGE_PREBUILT:-}" ] && [ -f build/worker/shim.mjs ]; then
    # scripts/test.sh builds once, then dry-runs every environment.
    echo "edge/build.sh: WHARF_EDGE_PREBUILT is set: using the existing edge/build/"
else
    "$worker_build" --release "$@"
fi
end=$(date +%s)

# What `wrangler deploy` uploads: the shim, the JS glue and the wasm module.
raw=0; gz=0
while IFS= read -r -d '' f; do
    raw=$((raw + $(stat -c %s "$f")))
    gz=$((gz + $(gzip -9 -c "$f" | wc -c)))
done < <(find build -type f \( -name '*.wasm' -o -name '*.js' -o -name '*.mjs' \) -print0)
# Issue 17: at most 512 KiB compressed (Workers' free plan allows 3 MiB;
# a smaller bundle starts a cold isolate sooner).
printf 'edge bundle: %d KiB raw, %d KiB gzip (limit 512 KiB gzip) — built in %ds\n' \
    $((raw / 1024)) $((gz / 1024)) $((end - start))
if [ "$gz" -gt $((512 * 1024)) ]; then
    echo "edge bundle is over 512 KiB compressed" >&2
    exit 1
fi
