#!/usr/bin/env bash
# Every check and test: formatting, clippy, Rust unit and integration tests (server and
# webrtc-rs peers on loopback), then the browser consult room in Chromium, then the physician's
# Chromium behind a 100 kbit/s rural link.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# `cargo test` built the server for the signaling integration tests: the browser tests use it.
CONSULT_SERVER_BIN="$PWD/target/debug/consult-server" web-client/tests/run.sh
# The physician's Chromium behind a tc-tbf-shaped 100 kbit/s link (root: network namespaces).
CONSULT_SERVER_BIN="$PWD/target/debug/consult-server" web-client/rural/run.sh
