#!/usr/bin/env bash
# Installs the Debian packages the workspace needs to build and test, if any are missing:
# a C toolchain (aws-lc, SQLite), Chromium for the browser tests, iproute2/util-linux for their
# loopback-only network namespace, and Node.js + npm where the machine has none.
set -euo pipefail
packages=(build-essential pkg-config ca-certificates chromium iproute2 util-linux)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
