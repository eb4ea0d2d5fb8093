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

scripts/install-deps.sh
cargo build --release -p wharf-origin
edge/build.sh

# Development secrets, random per checkout (the origin and the edge refuse the
# placeholders of .dev.vars.example). A .dev.vars from an earlier version
# (copied from the example) is set aside and replaced.
if [ -f .dev.vars ] && grep -qiE 'replace-me|dev-only-token-key|"wharfdev"' .dev.vars; then
    mv .dev.vars .dev.vars.old
    echo "dev.sh: .dev.vars held example secrets; moved to .dev.vars.old, writing fresh ones"
fi
if [ ! -f .dev.vars ]; then
    hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
    password="$(hex 12)"
    user_hash="$(printf %s "$password" | target/release/wharf-origin hash-password)"
    # wrangler expands `$NAME` in .dev.vars (dotenv-expand), which would eat
    # the stored form's `$salt`, and keeps `\$` as it is: spell each `$` as
    # the JSON escape `\u0024`, which WHARF_USERS' JSON reads back as `$`.
    user_hash="${user_hash//\$/\\u0024}"
    umask 077
    cat > .dev.vars <<VARS
# Written by scripts/dev.sh (random development secrets; see .dev.vars.example).
WHARF_TOKEN_KEY="$(hex 32)"
WHARF_S3_ACCESS_KEY="WHARFRO$(hex 8)"
WHARF_S3_SECRET_KEY="$(hex 24)"
WHARF_USERS='{"dev":"$user_hash"}'
VARS
    printf 'dev\t%s\n' "$password" > "$data/dev-user"
    echo "dev.sh: wrote .dev.vars; user \"dev\" (private rules) has password $password (also in $data/dev-user)"
fi
# The origin shares the edge's development secrets: the token key, and the
# read-only store key the edge presigns with. Its own read/write store key is
# random per start (not set below).
set -a; . ./.dev.vars; set +a

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
read_only_access_key = "$WHARF_S3_ACCESS_KEY"
read_only_secret_key = "$WHARF_S3_SECRET_KEY"

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
