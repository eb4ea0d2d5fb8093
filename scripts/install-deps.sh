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
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
