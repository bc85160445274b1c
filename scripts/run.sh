#!/usr/bin/env bash
# Starts the whole engine (signaling, SFU, web client) on embedded defaults:
# HTTPS on https://127.0.0.1:8443 with a generated development certificate, media on UDP
# 127.0.0.1:50000, data (audit trail, certificate) in ./data. Flags are passed through:
# scripts/run.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
exec cargo run --release --locked -p consult-signaling --bin consult-server -- "$@"
