#!/usr/bin/env bash
# A 3-node, 3-zone Garage cluster on loopback: the object store of Wharf's
# multi-region tests and of a production-like local setup. See
# infra/garage/README.md for the same layout on real hosts.
#
#   cluster.sh start DIR [--base-port P] [--buckets a,b,c]
#   cluster.sh stop DIR
#   cluster.sh kill-node DIR N        # SIGKILL node N (1..3)
#   cluster.sh start-node DIR N       # start node N again
#
# `start` writes DIR/nodeN/garage.toml (sqlite metadata, replication factor 3,
# zone dcN), starts the daemons, connects them, applies a layout with one
# node per zone, imports two access keys (read/write for the origins,
# read-only for the edge's presigned URLs), creates the buckets (default
# wharf-eu,wharf-us,wharf-ap) and writes DIR/env, a shell-sourceable file:
#   GARAGE_S3_ENDPOINT_1..3  http://127.0.0.1:PORT (node N's S3 API)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION=garage
#   WHARF_S3_ACCESS_KEY, WHARF_S3_SECRET_KEY  the read-only key (the edge's)
#   GARAGE_BUCKETS           the buckets, comma-separated
# Ports: node N uses P+10(N-1) (RPC), +1 (S3), +2 (admin); default P=3900.
#
# The binary: $GARAGE_BIN, else `garage` on PATH, else the cache that
# scripts/install-garage.sh fills.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

garage_bin() {
  local c
  if [[ -n "${GARAGE_BIN:-}" ]]; then echo "$GARAGE_BIN"; return; fi
  for c in "${WHARF_TOOLS:-/nonexistent}/garage/bin/garage" \
           "${CARGO_TARGET_DIR:-/nonexistent}/wharf-tools/garage/bin/garage" \
           "$HOME/.cache/wharf-tools/garage/bin/garage"; do
    if [[ -x "$c" ]]; then echo "$c"; return; fi
  done
  if command -v garage >/dev/null 2>&1; then command -v garage
  else
    echo "garage not found: run scripts/install-garage.sh (or set GARAGE_BIN)" >&2
    exit 3
  fi
}

cmd="${1:-}"; dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || usage
shift 2
base_port=3900
buckets="wharf-eu,wharf-us,wharf-ap"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base-port) base_port="$2"; shift 2 ;;
    --buckets) buckets="$2"; shift 2 ;;
    *) [[ "$cmd" == kill-node || "$cmd" == start-node ]] && break; usage ;;
  esac
done
GARAGE="$(garage_bin)"
NODES=3

g() { local n="$1"; shift; "$GARAGE" -c "$dir/node$n/garage.toml" "$@"; }

start_node() {
  local n="$1"
  ( cd "$dir/node$n" && exec setsid "$GARAGE" -c "$dir/node$n/garage.toml" server \
      >>"$dir/node$n/garage.log" 2>&1 ) &
  echo $! >"$dir/node$n/pid"
}

wait_rpc() {
  local n="$1" i
  for i in $(seq 1 100); do
    if g "$n" status >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "garage node $n did not answer; log:" >&2
  tail -20 "$dir/node$n/garage.log" >&2
  return 1
}

case "$cmd" in
start)
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  for n in $(seq 1 $NODES); do
    p=$((base_port + 10 * (n - 1)))
    mkdir -p "$dir/node$n/meta" "$dir/node$n/data"
    cat >"$dir/node$n/garage.toml" <<EOF
metadata_dir = "$dir/node$n/meta"
data_dir = "$dir/node$n/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$p"
rpc_public_addr = "127.0.0.1:$p"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((p + 1))"

[admin]
api_bind_addr = "127.0.0.1:$((p + 2))"
EOF
    chmod 600 "$dir/node$n/garage.toml"
    start_node "$n"
  done
  for n in $(seq 1 $NODES); do wait_rpc "$n"; done
  id1="$(g 1 node id -q 2>/dev/null | tail -1)"
  for n in $(seq 2 $NODES); do
    idn="$(g "$n" node id -q 2>/dev/null | tail -1)"
    g 1 node connect "$idn" >/dev/null
  done
  for n in $(seq 1 $NODES); do
    idn="$(g "$n" node id -q 2>/dev/null | tail -1)"
    g 1 layout assign -z "dc$n" -c 1G "${idn%@*}" >/dev/null
  done
  g 1 layout apply --version 1 >/dev/null
  # Wait until every node sees the layout and the cluster is healthy.
  for i in $(seq 1 200); do
    if g 1 status 2>/dev/null | grep -q "dc3" && g 1 bucket list >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  key_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  key_secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  g 1 key import --yes -n wharf "$key_id" "$key_secret" >/dev/null
  ro_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  ro_secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  g 1 key import --yes -n wharf-edge "$ro_id" "$ro_secret" >/dev/null
  IFS=, read -ra bl <<<"$buckets"
  for b in "${bl[@]}"; do
    # Retried: right after the layout change a write can miss its quorum.
    for i in $(seq 1 50); do
      if g 1 bucket create "$b" >/dev/null 2>&1 || g 1 bucket info "$b" >/dev/null 2>&1; then break; fi
      sleep 0.2
    done
    g 1 bucket allow --read --write --owner "$b" --key "$key_id" >/dev/null
    g 1 bucket allow --read "$b" --key "$ro_id" >/dev/null
  done
  {
    for n in $(seq 1 $NODES); do
      echo "GARAGE_S3_ENDPOINT_$n=http://127.0.0.1:$((base_port + 10 * (n - 1) + 1))"
    done
    echo "AWS_ACCESS_KEY_ID=$key_id"
    echo "AWS_SECRET_ACCESS_KEY=$key_secret"
    echo "AWS_REGION=garage"
    echo "WHARF_S3_ACCESS_KEY=$ro_id"
    echo "WHARF_S3_SECRET_KEY=$ro_secret"
    echo "GARAGE_BUCKETS=$buckets"
  } >"$dir/env"
  echo "garage cluster up: $dir/env"
  ;;
stop)
  for n in $(seq 1 $NODES); do
    [[ -f "$dir/node$n/pid" ]] && kill "$(cat "$dir/node$n/pid")" 2>/dev/null || true
  done
  for n in $(seq 1 $NODES); do
    pid="$(cat "$dir/node$n/pid" 2>/dev/null || true)"
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/node$n/pid"
  done
  ;;
kill-node)
  n="${1:?node number}"
  kill -9 "$(cat "$dir/node$n/pid")" 2>/dev/null || true
  rm -f "$dir/node$n/pid"
  ;;
start-node)
  n="${1:?node number}"
  start_node "$n"
  wait_rpc "$n"
  ;;
*) usage ;;
esac
