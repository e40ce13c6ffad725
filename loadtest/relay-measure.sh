#!/usr/bin/env bash
# What a standby's clients cost (docs/cluster.md: "Customers' and desks'
# sockets end at the node that took them", "Every node takes clients"): a
# cluster of two nodes on one nats-server, the active node pinned to CPU 0
# with one worker, the standby, nats-server and the harness on CPU 1. The
# same closed loop runs ROUNDS times against the active node directly and
# through the standby, alternating; each run prints the CPU ticks (1/100 s)
# the active node, the standby and nats-server spent, and the harness's
# messages/s. CPU per message = ticks × 10 ms / messages.
#
#   cargo build --release -p switchboard -p loadtest --bins
#   loadtest/relay-measure.sh
#
# Needs nats-server (2.9 or newer), taskset and a machine with 2 CPUs or
# more. Settings: BIN (the directory of both binaries, default
# ./target/release), CONVS (conversations per run, default 2000), ROUNDS
# (default 3), NATS_PORT (14222), PORT_ACTIVE (18801), PORT_STANDBY (18802).
set -euo pipefail
BIN=${BIN:-./target/release}
CONVS=${CONVS:-2000}
ROUNDS=${ROUNDS:-3}
NATS_PORT=${NATS_PORT:-14222}
PORT_ACTIVE=${PORT_ACTIVE:-18801}
PORT_STANDBY=${PORT_STANDBY:-18802}
NATS_SERVER=${NATS_SERVER:-nats-server}
export SWITCHBOARD_ADMIN_TOKEN=${SWITCHBOARD_ADMIN_TOKEN:-relay-measure-admin-token-0123456789}
export SWITCHBOARD_CLIENT_LIMITS=false
OUT=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

"$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$OUT/nats" >"$OUT/nats.log" 2>&1 &
nats=$!
pids+=("$nats")
sleep 0.5
common=(--cluster "nats://127.0.0.1:$NATS_PORT" --workers 1 --fsync batch --cluster-prefix "relay$$")
taskset -c 0 "$BIN/switchboard" "${common[@]}" --node-id active --data-dir "$OUT/a" \
  --bind "127.0.0.1:$PORT_ACTIVE" >"$OUT/a.out" 2>"$OUT/a.err" &
active=$!
pids+=("$active")
for _ in $(seq 200); do grep -q '^api:' "$OUT/a.out" && break; sleep 0.1; done
grep -q '^api:' "$OUT/a.out" || { echo "the first node never became active" >&2; exit 1; }
taskset -c 1 "$BIN/switchboard" "${common[@]}" --node-id standby --data-dir "$OUT/b" \
  --bind "127.0.0.1:$PORT_STANDBY" >"$OUT/b.out" 2>"$OUT/b.err" &
standby=$!
pids+=("$standby")
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT_STANDBY/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT_STANDBY/healthz" >/dev/null || { echo "the standby never relayed" >&2; exit 1; }

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  for port in "$PORT_ACTIVE" "$PORT_STANDBY"; do
    a0=$(ticks "$active"); b0=$(ticks "$standby"); n0=$(ticks "$nats")
    taskset -c 1 "$BIN/loadtest" --url "http://127.0.0.1:$port" --agents 50 --capacity 5 \
      --conversations "$CONVS" --messages 20 --concurrency 250 --broker-pid "$active" \
      --seed 7 --duration 300s >"$OUT/run.out" 2>&1 || { cat "$OUT/run.out" >&2; exit 1; }
    via=$([ "$port" = "$PORT_ACTIVE" ] && echo direct || echo relayed)
    echo "round $round $via: ticks active $(($(ticks "$active") - a0)) standby $(($(ticks "$standby") - b0)) nats $(($(ticks "$nats") - n0)); $(grep -h 'msg/s end to end' "$OUT/run.out")"
  done
done
