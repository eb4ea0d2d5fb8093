#!/usr/bin/env bash
# The one test command: installs what it needs, then runs every check and
# test — formatting, clippy, the core on wasm32, unit tests, and the
# end-to-end tests against real registries and clients.
#
# `scripts/test.sh --long` also runs the long forms: the core's parser
# property tests with 100,000 cases each instead of 1,000, and the load test
# with 200 clients for 60 s over 20 cold images instead of 40 for 5 s over 5.
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
    case "$arg" in
        --long)
            export WHARF_PROPTEST_CASES="${WHARF_PROPTEST_CASES:-100000}"
            export WHARF_LOAD_CLIENTS="${WHARF_LOAD_CLIENTS:-200}"
            export WHARF_LOAD_SECS="${WHARF_LOAD_SECS:-60}"
            export WHARF_LOAD_IMAGES="${WHARF_LOAD_IMAGES:-20}"
            ;;
        *) echo "usage: scripts/test.sh [--long]" >&2; exit 2 ;;
    esac
done

scripts/install-deps.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build -p wharf-core --target wasm32-unknown-unknown --locked
# The end-to-end tests run the real origin binary.
cargo build --workspace --bins --locked

# --- edge ---
# The Worker (issue 4): lint it for wasm32, build the bundle the end-to-end
# tests (tests/tests/edge_*.rs) run under `wrangler dev` (edge/build.sh prints
# its gzip size and fails above 512 KiB), and check that every environment in
# wrangler.toml deploys — an offline dry run, reusing that one build.
cargo clippy -p wharf-edge --target wasm32-unknown-unknown --locked -- -D warnings
edge/build.sh
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
for env in "" $(grep -oE '^\[env\.[A-Za-z0-9_-]+\]' wrangler.toml | sed -E 's/^\[env\.(.*)\]$/\1/'); do
    out="$(mktemp -d)"
    if ! WHARF_EDGE_PREBUILT=1 node_modules/.bin/wrangler deploy --dry-run --outdir "$out/bundle" ${env:+--env "$env"} >"$out/log" 2>&1; then
        cat "$out/log"
        echo "wrangler deploy --dry-run ${env:+--env $env} failed" >&2
        exit 1
    fi
    echo "wrangler deploy --dry-run ${env:---top-level}: $(grep -o 'Total Upload.*' "$out/log")"
    rm -rf "$out"
done
# --- end edge ---

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

# --- bench (short) ---
# Keeps the benchmark from rotting: its short variant (small images, few
# clients) against the debug origin built above. Speed targets are reported,
# never asserted; it fails only when a measurement cannot be made at all.
# Results go under target/ so the committed full-variant table
# (bench/results/latest.md) is not overwritten.
# Run the binary built by `cargo build --workspace --bins` above: `cargo run
# -p wharf-bench` would resolve features for that one package and rebuild
# half the dependency tree.
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/debug/wharf-bench" --short \
    --origin-bin "$target_dir/debug/wharf-origin" \
    --out "$target_dir/bench/latest.md"
