#!/usr/bin/env bash
# The local stack in one command: the origin with its embedded object store
# on 127.0.0.1:5000, pulling through from Docker Hub.
#
#   scripts/dev.sh            # upstream: Docker Hub (needs internet access)
#   scripts/dev.sh --offline  # upstream: a local Distribution registry on
#                             # 127.0.0.1:5001 seeded with generated images
#
# Data lives under ./.wharf-data (delete it to start cold). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

listen="${WHARF_LISTEN:-127.0.0.1:5000}"
data="${WHARF_DATA:-$PWD/.wharf-data}"
mkdir -p "$data"
cargo build --release -p wharf-origin

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ "${1:-}" = "--offline" ]; then
    command -v docker-registry >/dev/null || { echo "install the upstream registry: apt-get install docker-registry" >&2; exit 1; }
    mkdir -p "$data/upstream"
    cat > "$data/upstream/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $data/upstream/storage
http:
  addr: 127.0.0.1:5001
YAML
    docker-registry serve "$data/upstream/config.yml" > "$data/upstream/registry.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do curl -fs http://127.0.0.1:5001/v2/ >/dev/null && break; sleep 0.1; done
    cargo run --release -q -p wharf-tests --bin wharf-seed -- --registry http://127.0.0.1:5001 --repo library/demo --tag latest
    upstream="http://127.0.0.1:5001"
    echo "offline upstream on $upstream; try: docker pull $listen/docker.io/library/demo:latest"
else
    upstream="https://registry-1.docker.io"
    echo "try: docker pull $listen/docker.io/library/alpine:latest"
fi

target/release/wharf-origin --listen "$listen" --data "$data" --rule "docker.io=$upstream" &
pids+=($!)
wait -n
