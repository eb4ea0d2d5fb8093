#!/usr/bin/env bash
# The whole local stack in one command: the origin with its embedded object
# store (127.0.0.1:5000, S3 on 127.0.0.1:9000) and the edge Worker under
# `wrangler dev` (127.0.0.1:8787), pulling through from Docker Hub.
#
#   scripts/dev.sh            # upstream: Docker Hub (needs internet access)
#   scripts/dev.sh --offline  # upstream: a local Distribution registry on
#                             # 127.0.0.1:5001 seeded with a generated image
#
# Then: docker pull 127.0.0.1:8787/library/alpine   (through the edge)
#       docker pull 127.0.0.1:5000/docker.io/library/alpine   (origin only)
# Data lives under ./.wharf-data (delete it to start cold). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${WHARF_DATA:-$PWD/.wharf-data}"
mkdir -p "$data"
[ -f .dev.vars ] || cp .dev.vars.example .dev.vars
# The origin shares the edge's development secrets.
set -a; . ./.dev.vars; set +a

scripts/install-deps.sh
cargo build --release -p wharf-origin
edge/build.sh

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ "${1:-}" = "--offline" ]; then
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
    image="library/demo:latest"
else
    upstream="https://registry-1.docker.io"
    image="library/alpine:latest"
fi

cat > "$data/origin.toml" <<TOML
listen = "127.0.0.1:5000"
data = "$data"

[embedded]
listen = "127.0.0.1:9000"
access_key = "$WHARF_S3_ACCESS_KEY"
secret_key = "$WHARF_S3_SECRET_KEY"

[auth]
service = "localhost"
realm = "http://127.0.0.1:8787/token"

[[rule]]
prefix = "docker.io"
upstream = "$upstream"
TOML
# WHARF_TOKEN_KEY comes from .dev.vars through the environment.
target/release/wharf-origin --config "$data/origin.toml" &
pids+=($!)

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false WHARF_EDGE_PREBUILT=1
node_modules/.bin/wrangler dev --local --ip 127.0.0.1 --port 8787 &
pids+=($!)

echo "edge on 127.0.0.1:8787, origin on 127.0.0.1:5000; try: docker pull 127.0.0.1:8787/$image"
wait -n
