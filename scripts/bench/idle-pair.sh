#!/usr/bin/env bash
# Idle memory of two tend binaries side by side: each runs `tend agent` alone over the same
# converged spec set for a window, VmRSS read every 5 s, in turn (A B A B), and the largest
# VmRSS and the VmHWM of each window are printed.
#
#     bash scripts/bench/idle-pair.sh OLD_TEND NEW_TEND SPECS SCOPE [ROUNDS] [SECONDS]
#
# SPECS must already be applied under SCOPE (e.g. `tend --scope SCOPE apply SPECS`). The
# agents use a state directory, lock directory and socket of their own under a temporary
# directory, so a running agent is not disturbed; each is stopped with SIGTERM (services
# keep running).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 OLD_TEND NEW_TEND SPECS SCOPE [ROUNDS] [SECONDS]" >&2; exit 2; }
old="$1" new="$2" specs="$3" scope="$4" rounds="${5:-2}" seconds="${6:-60}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tendidle.XXXXXX")"
trap 'rm -rf "$work"' EXIT
for _ in $(seq 1 "$rounds"); do
    for who in old new; do
        bin="$old"; [ "$who" = new ] && bin="$new"
        TEND_SOCKET="$work/tend.sock" "$bin" --scope "$scope" --state-dir "$work/state" --lock-dir "$work/locks" \
            agent --specs "$specs" >"$work/$who.log" 2>&1 &
        pid=$!
        sleep 10
        max=0
        for _ in $(seq 1 $((seconds / 5))); do
            r=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
            [ "$r" -gt "$max" ] && max=$r
            sleep 5
        done
        hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
        echo "$who ($bin): VmRSS max ${max} kB, VmHWM ${hwm} kB"
        kill -TERM "$pid"
        wait "$pid" || true
    done
done
