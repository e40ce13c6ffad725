#!/usr/bin/env bash
# Instructions per round trip of the broker's own code (user space), counted
# by callgrind: repeatable whatever else the machine is doing, unlike CPU
# time. Runs the broker under `valgrind --tool=callgrind` with one worker,
# drives it with the per-core closed loop (100 conversations, 20 agents),
# zeroes the counters once the load is steady, dumps them WINDOW seconds
# later and divides by the round trips /metrics counted in between.
#
#   cargo build --release -p switchboard -p loadtest --bins
#   loadtest/callgrind-round-trip.sh ./target/release/switchboard
#
# Needs valgrind (Debian: apt-get install valgrind), curl and python3.
set -euo pipefail
BIN=${1:?usage: $0 BROKER_BINARY}
PORT=${PORT:-18090}
SETTLE=${SETTLE:-20}
WINDOW=${WINDOW:-15}
LOADTEST=${LOADTEST:-./target/release/loadtest}
export SWITCHBOARD_ADMIN_TOKEN=${SWITCHBOARD_ADMIN_TOKEN:-callgrind-token-0123456789abcdef0123456789}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

messages() {
  curl -s -H "Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN" "http://127.0.0.1:$PORT/metrics" |
    awk '/^switchboard_messages_total/ { s += $2 } END { print s + 0 }'
}

valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" --dump-instr=no \
  "$BIN" --bind "127.0.0.1:$PORT" --workers 1 --client-limits false >"$OUT/broker.log" 2>&1 &
broker=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.3
done
"$LOADTEST" --per-core --url "http://127.0.0.1:$PORT" --broker-pid "$broker" --agents 20 --capacity 5 \
  --conversations 100 --ramp 200 --warmup 15s --measure $((SETTLE + WINDOW + 10))s --progress off \
  >"$OUT/load.log" 2>&1 &
load=$!
sleep "$SETTLE"
callgrind_control -z "$broker" >/dev/null
before=$(messages)
sleep "$WINDOW"
after=$(messages)
callgrind_control -d "$broker" >/dev/null
wait "$load" || { cat "$OUT/load.log" >&2; exit 1; }
kill "$broker"
wait "$broker" 2>/dev/null || true
# The dump asked for above is the window (cg.<pid>.1); cg.<pid> is what ran
# after it.
instructions=$(callgrind_annotate "$OUT/cg.$broker.1" 2>/dev/null |
  awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
python3 -c "
m = $after - $before
print(f'{m} messages ({m // 2} round trips) in ${WINDOW} s; '
      f'{$instructions:,} instructions; {round($instructions / (m / 2)):,} per round trip')"
