#!/usr/bin/env bash
# Every check and test of the workspace: formatting, clippy, unit and integration tests
# (the integration tests start the server and webrtc-rs peers on loopback themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
