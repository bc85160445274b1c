#!/usr/bin/env bash
# The 100 kbps scenario as a bench: runs signaling/tests/bandwidth.rs (a cart's stethoscope,
# speech, otoscope and camera to a physician whose link goes 2 Mbps → 100 kbps with 100 ms and
# 2 % loss → 2 Mbps), keeps its time series and plots it:
#   benches/results/bandwidth-scenario.json, benches/results/bandwidth-scenario.svg
# Usage: benches/bandwidth/run.sh [--debug]   (default: release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh bench
profile=(--release)
[ "${1:-}" = --debug ] && profile=()
cargo test "${profile[@]}" -p consult-signaling --test bandwidth -- --nocapture
mkdir -p benches/results
cp test-artifacts/bandwidth-scenario.json benches/results/bandwidth-scenario.json
/usr/bin/python3 benches/bandwidth/plot.py benches/results/bandwidth-scenario.json \
  benches/results/bandwidth-scenario.svg
echo "wrote benches/results/bandwidth-scenario.{json,svg}"
