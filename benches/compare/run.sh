#!/usr/bin/env bash
# Our server against an established SFU, Janus 1.1 (Debian's `janus`, VideoRoom plugin), on the
# same machine, with the same load tester, media and scenarios:
#   fanout-N   one cart (stethoscope 64 kbit/s + camera 600 kbit/s, 30 fps) → N subscribers
#   rooms-N    N consultations of 3 (physician, cart, patient), 16 forwarded streams each
#   link-100k  a physician behind 100 kbit/s (100 ms, 2 % loss) and a cart (run it by name)
# Janus gathers ICE candidates on non-loopback interfaces only, so both servers and the load
# tester run in a network namespace of our own (lo + a veth pair, 10.99.0.1, nothing leaves
# the machine). Needs root (ip netns).
# Writes benches/results/compare-<server>-<scenario>.json and benches/results/compare-summary.md.
# Usage: benches/compare/run.sh [--quick] [scenario …]   (--quick: 8 s per run instead of 20;
#        SERVERS=ours or SERVERS=janus: only that one)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh compare
duration=20
if [ "${1:-}" = --quick ]; then duration=8; shift; fi
scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(fanout-10 fanout-50 rooms-1 rooms-10)

cargo build --release --locked -p consult-signaling -p consult-loadtest
bin=$PWD/target/release
mkdir -p benches/results
work=$(mktemp -d)
ns=consult-compare-$$
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  # Whatever still runs in the namespace (a server that did not start in time) goes with it.
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
in_ns() { ip netns exec "$ns" "$@"; }
in_ns ip link set lo up
in_ns ip link add cmp0 type veth peer name cmp1
in_ns ip addr add 10.99.0.1/24 dev cmp0
in_ns ip link set cmp0 up
in_ns ip link set cmp1 up

# Janus: only the VideoRoom plugin and the WebSocket transport, candidates on cmp0.
janus_lib=$(dirname "$(dirname "$(dpkg -L janus | grep -m1 '/plugins/libjanus_videoroom.so$')")")
mkdir -p "$work/janus"
cat >"$work/janus/janus.jcfg" <<EOF
general: {
  configs_folder = "$work/janus"
  plugins_folder = "$janus_lib/plugins"
  transports_folder = "$janus_lib/transports"
  events_folder = "$janus_lib/events"
  loggers_folder = "$janus_lib/loggers"
  debug_level = 3
}
media: { rtp_port_range = "20000-40000" }
nat: { ice_enforce_list = "cmp0" }
plugins: {
  disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}
transports: {
  disable = "libjanus_http.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so"
}
loggers: { disable = "libjanus_jsonlog.so" }
events: { broadcast = false }
EOF
echo 'general: { }' >"$work/janus/janus.plugin.videoroom.jcfg"
cat >"$work/janus/janus.transport.websockets.jcfg" <<'EOF'
general: { json = "plain", ws = true, ws_port = 18188, ws_ip = "127.0.0.1", wss = false }
admin: { admin_ws = false, admin_wss = false }
EOF

wait_for() {
  for _ in $(seq 100); do
    "$@" && return 0
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1
}

start_ours() {
  rm -rf "$work/data"
  # Not through in_ns: $! must be the server itself (ip netns exec execs it).
  ip netns exec "$ns" "$bin/consult-server" --insecure-http --http-bind 127.0.0.1:18080 --udp-bind 127.0.0.1:18081 \
    --data-dir "$work/data" "$@" >"$work/server.log" 2>&1 &
  server_pid=$!
  wait_for in_ns curl -sf http://127.0.0.1:18080/readyz -o /dev/null
}

start_janus() {
  ip netns exec "$ns" janus -F "$work/janus" -C "$work/janus/janus.jcfg" -o >"$work/server.log" 2>&1 &
  server_pid=$!
  wait_for in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/18188' 2>/dev/null
}

stop_server() {
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
}

run() {
  local server=$1 name=$2; shift 2
  local target=(--url http://127.0.0.1:18080 --sfu-addr 127.0.0.1:18081)
  [ "$server" = janus ] && target=(--janus-ws ws://127.0.0.1:18188)
  echo "== $server $name"
  in_ns "$bin/consult-loadtest" "${target[@]}" --server-pid "$server_pid" --duration "$duration" \
    --warmup 3 --label "$server $name" --json "benches/results/compare-$server-$name.json" --quiet "$@" \
    2>"$work/loadtest.err" | tee "$work/$server-$name.txt"
}

for s in "${scenarios[@]}"; do
  case $s in
    fanout-*)
      n=${s#fanout-}
      args=(--rooms 1 --companions 1 --patients $((n - 1)) --companion-tracks stethoscope,camera
        --physician-tracks none --patient-tracks none) ;;
    rooms-*) args=(--rooms "${s#rooms-}" --room-interval-ms 100) ;;
    link-100k)
      # As in benches/scale: the physician behind 100 kbit/s, 100 ms, 2 % loss both ways; ours
      # with its downlink estimation and allocator on.
      args=(--rooms 1 --patients 0 --physician-tracks microphone --stethoscope-kbps 32
        --microphone-kbps 16 --impair physician --impair-rate-kbps 100 --impair-delay-ms 100
        --impair-loss-pct 2 --impair-queue-ms 300 --downlink-estimation) ;;
    *) echo "unknown scenario $s" >&2; exit 1 ;;
  esac
  for server in ${SERVERS:-ours janus}; do
    if [ "$s" = link-100k ] && [ "$server" = ours ]; then
      start_ours --downlink-estimation
    else
      "start_$server"
    fi
    run "$server" "$s" "${args[@]}"
    stop_server
  done
done
/usr/bin/python3 benches/compare/table.py benches/results benches/results/compare-summary.md
cat benches/results/compare-summary.md
