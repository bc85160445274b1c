#!/usr/bin/env bash
# Installs the Debian packages the workspace needs, if any are missing.
#   install-deps.sh build   a C toolchain (aws-lc, SQLite): enough to build and run the server
#   install-deps.sh test    also libopus and ffmpeg (cart), Chromium for the browser tests, iproute2/util-linux for their
#                           loopback-only network namespace, nftables and tcpdump for the rural-link test, Node.js +
#                           npm where missing
#   install-deps.sh bench   the test packages, matplotlib for the benches' plots, curl
#   install-deps.sh compare the bench packages and Janus (the SFU benches/compare measures us against)
#   install-deps.sh profile the bench packages and perf (benches/profile)
set -euo pipefail
packages=(build-essential pkg-config ca-certificates)
if [ "${1:-test}" = test ] || [ "${1:-}" = bench ] || [ "${1:-}" = compare ] || [ "${1:-}" = profile ]; then
  packages+=(libopus-dev ffmpeg chromium iproute2 util-linux nftables tcpdump)
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
fi
case "${1:-}" in
  bench) packages+=(python3-matplotlib curl) ;;
  compare) packages+=(python3-matplotlib curl janus) ;;
  profile) packages+=(python3-matplotlib curl linux-perf) ;;
esac
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
command -v cargo >/dev/null || { echo "cargo (a Rust toolchain) is required" >&2; exit 1; }
