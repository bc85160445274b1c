#!/usr/bin/env bash
# Macro benches driven by the load tester against a release server, a fresh one per scenario:
#   fan-out     one cart (stethoscope + camera) → 1, 10, 50, 100 subscribers
#   rooms       1, 10, 50 consultations of 3 (physician, cart, patient), 16 streams each
#   threadsT-N  N consultations of 3 with T SFU shards (e.g. threads1-30 threads2-30)
#   simulcast-N N consultations of 3 whose cameras are sent as three simulcast layers
#   link-100k   one consultation (physician, cart), the physician behind 100 kbit/s, 100 ms,
#               2 % loss both ways (load tester with --downlink-estimation: its webrtc-rs peers
#               otherwise tell the server not to estimate their downlinks)
# Writes benches/results/scale-<scenario>.json, benches/results/scale.svg and
# benches/results/scale-summary.md (the table for benches/README.md).
# Usage: benches/scale/run.sh [--quick] [scenario …]   (--quick: 8 s per run instead of 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh bench
duration=20
if [ "${1:-}" = --quick ]; then duration=8; shift; fi
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(fanout-1 fanout-10 fanout-50 fanout-100 rooms-1 rooms-10 rooms-50 threads1-30 threads2-30
  simulcast-10 link-100k)

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

start_server() {
  http=$(free_port); udp=$(free_port)
  rm -rf "$work/data"
  "$bin/consult-server" --insecure-http --http-bind "127.0.0.1:$http" --udp-bind "127.0.0.1:$udp" \
    --data-dir "$work/data" "$@" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1
}

stop_server() {
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
}

run() {
  local name=$1; shift
  echo "== $name"
  "$bin/consult-loadtest" --url "http://127.0.0.1:$http" --sfu-addr "127.0.0.1:$udp" \
    --server-pid "$server_pid" --duration "$duration" --warmup 3 --label "$name" \
    --json "benches/results/scale-$name.json" --quiet "$@" | tee "$work/$name.txt"
}

for s in "${scenarios[@]}"; do
  case $s in
    fanout-*)
      n=${s#fanout-}
      start_server
      run "$s" --rooms 1 --companions 1 --patients $((n - 1)) --companion-tracks stethoscope,camera \
        --physician-tracks none --patient-tracks none
      stop_server ;;
    rooms-*)
      start_server
      run "$s" --rooms "${s#rooms-}" --room-interval-ms 100
      stop_server ;;
    threads*-*)
      # The same 30 (or N) consultations with one or two SFU shards: what the second core buys.
      t=${s%%-*}; t=${t#threads}
      start_server --sfu-threads "$t"
      run "$s" --rooms "${s#*-}" --room-interval-ms 100
      stop_server ;;
    simulcast-*)
      # Like rooms-N, every camera as q/h/f layers: the SFU forwards one layer per subscriber
      # and tells the publishers to pause the layers nobody receives.
      start_server
      run "$s" --rooms "${s#simulcast-}" --room-interval-ms 100 --simulcast camera
      stop_server ;;
    link-100k)
      start_server --downlink-estimation
      # As in the issue's scenario: the cart's stethoscope at 32 kbit/s and speech at 16, the
      # physician sending speech only; video must give way.
      run "$s" --rooms 1 --patients 0 --physician-tracks microphone --stethoscope-kbps 32 --downlink-estimation \
        --microphone-kbps 16 --impair physician --impair-rate-kbps 100 --impair-delay-ms 100 \
        --impair-loss-pct 2 --impair-queue-ms 300
      stop_server ;;
    *) echo "unknown scenario $s" >&2; exit 1 ;;
  esac
done
/usr/bin/python3 benches/scale/plot.py benches/results benches/results/scale.svg \
  benches/results/scale-summary.md
echo "wrote benches/results/scale-*.json, scale.svg, scale-summary.md"
