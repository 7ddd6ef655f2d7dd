#!/usr/bin/env bash
# The fleet simulation (issue 15): a 3-member etcd (Debian's etcd-server) on loopback ports,
# data in /dev/shm, then `tend-sim` with the given arguments against it; etcd is stopped and
# its data removed afterwards.
#
#     bash scripts/bench/sim.sh [TEND_SIM] -- --nodes 1000 --duration 5m --scenario steady -o json
#
# TEND_SIM defaults to target/release/tend-sim (`cargo build --release --bin tend-sim`).
set -euo pipefail
sim="target/release/tend-sim"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then sim="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
command -v etcd >/dev/null || { echo "sim.sh: etcd is not installed (bash -c 'source scripts/lib.sh; ensure_etcd')" >&2; exit 1; }
[ -x "$sim" ] || { echo "sim.sh: $sim is missing: cargo build --release --bin tend-sim" >&2; exit 1; }
data="$(mktemp -d /dev/shm/tend-sim-etcd.XXXXXX)"
base=$((42000 + ($$ % 50) * 10))
cluster="" endpoints=""
for i in 0 1 2; do
    cluster="${cluster:+$cluster,}m$i=http://127.0.0.1:$((base + 2 * i + 1))"
    endpoints="${endpoints:+$endpoints,}http://127.0.0.1:$((base + 2 * i))"
done
pids=()
# `--scenario etcd-restart` starts a member again itself: every etcd on this data goes.
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    pkill -f -- "--data-dir $data/" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
for i in 0 1 2; do
    c=$((base + 2 * i)) p=$((base + 2 * i + 1))
    etcd --name "m$i" --data-dir "$data/m$i" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "tend-sim-$$" \
        >"$data/m$i.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 ||
    { echo "sim.sh: the 3-member etcd did not start:" >&2; tail -n 5 "$data"/m*.log >&2; exit 1; }
"$sim" --etcd "$endpoints" "$@"
