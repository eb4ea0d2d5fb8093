#!/usr/bin/env bash
# The one test command: installs what it needs, then runs every check and
# test — formatting, clippy, the core on wasm32, unit tests, and the
# end-to-end tests against real registries and clients.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build -p wharf-core --target wasm32-unknown-unknown --locked
# The end-to-end tests run the real origin binary.
cargo build --workspace --bins --locked

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
