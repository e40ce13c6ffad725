#!/usr/bin/env bash
# The cluster's scale run (docs/performance.md, "Cluster: more sockets than
# one process holds"): more open WebSocket connections than one process may
# hold, spread over a cluster of three nodes on one nats-server, against a
# single node on the same machine.
#
#   1. single: one node alone, one harness run of CONVS webchat
#      conversations held open (HOLD) with AGENTS agents;
#   2. cluster: three nodes (the first active, the other two standbys
#      serving their clients' sockets and carrying them to it over NATS),
#      three harness runs of the same size at once, one per node, so
#      3 × (CONVS + AGENTS) client sockets are open together.
#
# Each run prints its harness summary (conversations, messages/s,
# customer→agent latency, errors); then the open files of the three nodes
# together at the peak (from /proc, every 2 s) and each node's peak RSS.
#
#   cargo build --release -p switchboard -p loadtest --bins
#   loadtest/cluster-scale.sh                 # CONVS=14000 AGENTS=100 by default
#   SCALE=0.1 loadtest/cluster-scale.sh       # try it small first
#
# Needs nats-server (2.9 or newer). Settings: BIN (./target/release), CONVS,
# AGENTS, RATE (new conversations/s per harness run, 300), HOLD (90s),
# SCALE (multiplies CONVS, AGENTS and RATE), NATS_PORT (14322), BASE_PORT
# (18811: nodes on BASE_PORT, +1, +2), SINGLE (1: run the single node too;
# 0: the cluster only), VIA (standbys: the second and third harness runs
# through the standbys; active: all three against the active node, to tell
# the cost of the standbys' sockets from the cluster's).
set -euo pipefail
BIN=${BIN:-./target/release}
SCALE=${SCALE:-1}
CONVS=$(python3 -c "print(max(1, round(${CONVS:-14000} * $SCALE)))")
AGENTS=$(python3 -c "print(max(1, round(${AGENTS:-100} * $SCALE)))")
RATE=$(python3 -c "print(max(1, round(${RATE:-300} * $SCALE)))")
CAPACITY=$(((CONVS + AGENTS - 1) / AGENTS))
HOLD=${HOLD:-90s}
NATS_PORT=${NATS_PORT:-14322}
BASE_PORT=${BASE_PORT:-18811}
NATS_SERVER=${NATS_SERVER:-nats-server}
export SWITCHBOARD_ADMIN_TOKEN=${SWITCHBOARD_ADMIN_TOKEN:-cluster-scale-admin-token-0123456789}
export SWITCHBOARD_CLIENT_LIMITS=false
export SWITCHBOARD_MAX_CONNECTIONS=19000
OUT=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$OUT"' EXIT

harness() { # url label
  "$BIN/loadtest" --url "$1" --agents "$AGENTS" --capacity "$CAPACITY" \
    --conversations "$CONVS" --messages 3 --rate "$RATE" --hold "$HOLD" --heartbeat 15s \
    --ramp 500 --duration 10m --step-timeout 60s --run-id "$2" --progress off \
    --report "$OUT/$2.json" >"$OUT/$2.out" 2>&1
}

summary() { # label
  echo "== $1"
  grep -E "^verdict|^conversations:|^messages:|^  customer_to_agent|^broker pid|^errors by code" "$OUT/$1.out" || true
}

# 1. A single node.
if [ "${SINGLE:-1}" = 1 ]; then
  "$BIN/switchboard" --bind "127.0.0.1:$BASE_PORT" >"$OUT/single.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$BASE_PORT/healthz" >/dev/null && break; sleep 0.1; done
  harness "http://127.0.0.1:$BASE_PORT" single || true
  summary single
  stop_all
fi

# 2. A cluster of three.
"$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$OUT/nats" >"$OUT/nats.log" 2>&1 &
pids+=("$!")
sleep 0.5
for i in 0 1 2; do
  "$BIN/switchboard" --cluster "nats://127.0.0.1:$NATS_PORT" --node-id "node-$i" \
    --cluster-prefix "scale$$" --data-dir "$OUT/node-$i" --bind "127.0.0.1:$((BASE_PORT + i))" \
    >"$OUT/node-$i.out" 2>"$OUT/node-$i.err" &
  pids+=("$!")
  if [ "$i" = 0 ]; then
    for _ in $(seq 200); do grep -q '^api:' "$OUT/node-0.out" && break; sleep 0.1; done
  fi
done
for i in 1 2; do
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$((BASE_PORT + i))/healthz" >/dev/null && break; sleep 0.1; done
done
runs=()
for i in 0 1 2; do
  port=$((BASE_PORT + i))
  [ "${VIA:-standbys}" = active ] && port=$BASE_PORT
  harness "http://127.0.0.1:$port" "node$i" &
  runs+=("$!")
done
peak=0
rss_peak=(0 0 0)
while kill -0 "${runs[@]}" 2>/dev/null; do
  for i in 0 1 2; do
    pid=$(pgrep -f -- "--node-id node-$i" | head -1 || true)
    [ -n "$pid" ] || continue
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "${rss_peak[$i]}" ] && rss_peak[$i]=$rss
  done
  open=0
  for i in 1 2; do
    pid=$(pgrep -f -- "--node-id node-$i" | head -1 || true)
    [ -n "$pid" ] && open=$((open + $(ls "/proc/$pid/fd" 2>/dev/null | wc -l)))
  done
  pid=$(pgrep -f -- "--node-id node-0" | head -1 || true)
  [ -n "$pid" ] && open=$((open + $(ls "/proc/$pid/fd" 2>/dev/null | wc -l)))
  [ "$open" -gt "$peak" ] && peak=$open
  sleep 2
done
wait "${runs[@]}" || true
for i in 0 1 2; do summary "node$i"; done
echo "== open files of the three nodes together at the peak: $peak"
echo "== peak RSS (KiB, sampled every 2 s): node-0 ${rss_peak[0]}, node-1 ${rss_peak[1]}, node-2 ${rss_peak[2]}"
