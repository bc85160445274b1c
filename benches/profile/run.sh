#!/usr/bin/env bash
# Where the server's CPU goes per forwarded packet: the load tester drives a release server
# (as in benches/scale), `perf record -g` samples the server for 8 s in the middle of the run,
# and breakdown.py sorts the samples into the kernel's send path, the loopback delivery into
# the receivers' sockets, waiting, receiving and user space (str0m, engine, tokio, libc).
# Writes benches/results/profile-<scenario>.{json,md}; prints the table.
# Usage: benches/profile/run.sh [scenario …]   (fanout-N or rooms-N; default rooms-10 fanout-100)
# Needs perf and the right to use it (root, or kernel.perf_event_paranoid ≤ 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh profile
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(rooms-10 fanout-100)

# Line tables are enough for perf's symbols (and keep the build from starting over).
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cargo build --release --locked -p consult-signaling -p consult-loadtest
bin=target/release
mkdir -p benches/results
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for s in "${scenarios[@]}"; do
  case $s in
    fanout-*) n=${s#fanout-}
      args=(--rooms 1 --companions 1 --patients $((n - 1)) --companion-tracks stethoscope,camera
        --physician-tracks none --patient-tracks none) ;;
    rooms-*) args=(--rooms "${s#rooms-}" --room-interval-ms 100) ;;
    *) echo "unknown scenario $s" >&2; exit 1 ;;
  esac
  echo "== $s"
  http=$(free_port); udp=$(free_port)
  rm -rf "$work/data"
  "$bin/consult-server" --insecure-http --http-bind "127.0.0.1:$http" --udp-bind "127.0.0.1:$udp" \
    --data-dir "$work/data" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break; sleep 0.1; done
  # Sampled from 9 s to 17 s of a 20 s run: every participant has joined and media flows.
  (sleep 9; perf record -F 1999 -g -p "$server_pid" -o "$work/perf.data" -- sleep 8 >/dev/null 2>&1) &
  perf_pid=$!
  "$bin/consult-loadtest" --url "http://127.0.0.1:$http" --sfu-addr "127.0.0.1:$udp" \
    --server-pid "$server_pid" --duration 20 --warmup 3 --label "profile-$s" \
    --json "$work/loadtest.json" --quiet "${args[@]}" >"$work/loadtest.log" 2>&1
  wait "$perf_pid"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  perf script -i "$work/perf.data" -F ip,sym,dso 2>/dev/null \
    | /usr/bin/python3 benches/profile/breakdown.py "$s" "$work/loadtest.json" \
      "benches/results/profile-$s.json" "benches/results/profile-$s.md"
  cat "benches/results/profile-$s.md"
done
