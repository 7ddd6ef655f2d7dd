#!/usr/bin/env bash
# `tend agent` beside what people run today, side by side in one run (issue 4).
#
#     bash scripts/bench/agent.sh                          # all three, ~20 minutes
#     bash scripts/bench/agent.sh repair commit            # the two latency parts only
#     BENCH_IDLE_SECONDS=60 bash scripts/bench/agent.sh    # a smoke run
#
# Sections (arguments, or BENCH_SECTIONS; default all three, in this order):
#
#   repair   Drift repair latency. 2 x REPAIR_KILLS services run under one agent, and
#            REPAIR_KILLS containers with Docker's own restart policy (`docker run
#            --restart always`, the same image and command). Each container is killed once, a few seconds
#            apart, rotating between the subjects: `kill -KILL` of its main process on the
#            host (a crash: the only kill Docker's restart policy reacts to, see below),
#            and for tend also `docker kill`. The latency is taken from `docker events`:
#            from the moment the kill is sent (date +%s%N just before it; the engine's
#            event clock is the same host clock) to the `start` event of the same
#            container; die -> start is reported too. One kill per container, so neither
#            tend's crash-loop backoff nor Docker's (100 ms, doubling) comes into play
#            beyond the first restart. Before the kills, it checks once that Docker does
#            not restart a `--restart always` container stopped with `docker kill`. After
#            them, it times how long the engine's container list lags behind the die event.
#   idle     An agent with IDLE_N (100) services, converged, left alone for IDLE_SECONDS
#            (600) with the default resync (60 s). Beside it, during the same window, the
#            runbook loop `while true; do docker-compose -p P up -d; sleep 60; done` over
#            an equivalent compose file (converged before the window, so every run in it
#            is a no-op, like the agent's passes). Measured every IDLE_SAMPLE seconds:
#            the agent's VmRSS and VmHWM (/proc/PID/status) and CPU (utime + stime +
#            cutime + cstime of /proc/PID/stat). The loop's CPU is the usage of a cgroup of
#            its own that the loop shell enters before its first command, so that every
#            compose run, finished or in flight, is counted (cgroup v2 cpu.stat, or v1
#            cpuacct.usage); the agent runs in a cgroup of its own too, as a cross-check.
#            Two more estimates of the loop's CPU: the sum over its session's processes in
#            /proc (the loop shell's own and reaped children's times plus the live ones'),
#            and GNU time's user + system of each compose run. CPU % is of one CPU.
#   commit   Commit-to-converged latency of a one-service change. The agent follows a bare
#            git repository over file:// (`interval: GIT_INTERVAL`); the peer is the
#            runbook loop `while true; do git pull && docker-compose up -d; sleep
#            GIT_INTERVAL; done` in a clone of a second bare repository. Each round
#            changes one service's command (sleep 3600 <-> 3601), commits, and times
#            from just before `git push` to the `start` event of that service's new
#            container (then checks that it runs the new command). The rounds alternate
#            tend / compose; the compose loop runs only during its own rounds (started
#            fresh, one full iteration before the push), so that its CPU (one compose
#            run every interval) does not slow tend's rounds. The push comes at a random
#            phase of the poll (a random sleep before it).
#
# Everything carries its own names and labels: tend scopes `bench-agent` and
# `bench-agent-git`, compose projects `benchagentidle` and `benchagentgit`, Docker's peers
# `tendbench.agent=peer`; only those are removed, before the run and at exit (also on
# failure or Ctrl-C), with the agents, the loops, the cgroups and the work directory.
# Nothing is pulled, nothing is installed, no network is used: it needs docker (with the
# local image tend-demo/busybox:1, see scripts/lib.sh), docker-compose 1.29, git, jq, and
# GNU time (optional). It builds tend with `cargo build --release -p tend --offline` and
# runs a copy of the binary (BENCH_TEND=path skips the build).
#
# Knobs (environment):
#   BENCH_SECTIONS        sections                                  "repair idle commit"
#   BENCH_REPAIR_KILLS    kills per subject (one container each)    24
#   BENCH_REPAIR_GAP      seconds between kills                     3
#   BENCH_LIST_PROBES     kills of plain containers to time the lag of the engine's
#                         container list behind the die event (0: none)  10
#   BENCH_IDLE_N          services in the idle section              100
#   BENCH_IDLE_SECONDS    the idle window                           600
#   BENCH_IDLE_SAMPLE     seconds between samples                   5
#   BENCH_COMPOSE_SLEEP   the runbook loop's sleep (idle section)   60
#   BENCH_COMMIT_N        services in the git repositories          10
#   BENCH_COMMIT_ROUNDS   pushes per subject                        7
#   BENCH_GIT_INTERVAL    poll interval, seconds (both subjects)    1
#   BENCH_TIMEOUT         seconds for any one wait                  120
#   BENCH_TEND            a tend binary to use instead of building one
#   BENCH_TEND_LABEL      what to call it in the report (e.g. "built from 903c165")
#   BENCH_DIR             work directory (kept)                     a new /tmp/tendagentbench.* (removed)
#   BENCH_KEEP=1          keep the work directory (samples, logs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

if [ "$#" -gt 0 ]; then SECTIONS="$*"; else SECTIONS="${BENCH_SECTIONS:-repair idle commit}"; fi
REPAIR_KILLS="${BENCH_REPAIR_KILLS:-24}"
REPAIR_GAP="${BENCH_REPAIR_GAP:-3}"
LIST_PROBES="${BENCH_LIST_PROBES:-10}"
IDLE_N="${BENCH_IDLE_N:-100}"
IDLE_SECONDS="${BENCH_IDLE_SECONDS:-600}"
IDLE_SAMPLE="${BENCH_IDLE_SAMPLE:-5}"
COMPOSE_SLEEP="${BENCH_COMPOSE_SLEEP:-60}"
COMMIT_N="${BENCH_COMMIT_N:-10}"
COMMIT_ROUNDS="${BENCH_COMMIT_ROUNDS:-7}"
GIT_INTERVAL="${BENCH_GIT_INTERVAL:-1}"
TIMEOUT="${BENCH_TIMEOUT:-120}"
COMPOSE_TIMEOUT=300 # seconds for one compose run; 1.29 can hang (docs/BENCHMARKS.md)

for s in $SECTIONS; do
    case "$s" in repair | idle | commit) ;; *) die "unknown section '$s' (repair, idle, commit)" ;; esac
done

SCOPE=bench-agent
GIT_SCOPE=bench-agent-git
IDLE_PROJECT=benchagentidle
GIT_PROJECT=benchagentgit
PEER_LABEL=tendbench.agent=peer

if [ -n "${BENCH_DIR:-}" ]; then
    WORK="$BENCH_DIR"
    KEEP=1
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/tendagentbench.XXXXXX")"
    KEEP="${BENCH_KEEP:-0}"
fi
mkdir -p "$WORK/logs"
LOGS="$WORK/logs"
RESULTS="$WORK/results.tsv" # section, subject, metric, comma-separated values
: >"$RESULTS"
EVENTS="$WORK/events.log" # docker events: ns action name id

# What the exit trap stops and removes.
AGENT_PIDS=()
LOOP_PGIDS=()
EVENTS_PID=""
CGROUPS=()

now_ns() { date +%s%N; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load1() { cut -d' ' -f1 /proc/loadavg; }
dk() { timeout 60 docker "$@"; }

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
result() { awk -F'\t' -v a="$1" -v b="$2" -v c="$3" '$1 == a && $2 == b && $3 == c { v = $4 } END { print v }' "$RESULTS"; }

# ---------------------------------------------------------------- cleanup

remove_label() {
    local ids
    ids="$(dk ps -aq --filter "label=$1")" || return 0
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086 # a list of IDs
        dk rm -f $ids >/dev/null || true
    fi
}

remove_containers() {
    remove_label "tend.scope=$SCOPE"
    remove_label "tend.scope=$GIT_SCOPE"
    remove_label "com.docker.compose.project=$IDLE_PROJECT"
    remove_label "com.docker.compose.project=$GIT_PROJECT"
    remove_label "$PEER_LABEL"
}

# stop_pid PID: SIGTERM, up to 15 s, then SIGKILL. Returns the exit status when it was our child.
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not stop within 15 s of SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null
}

# stop_group PGID: the same for a process group (a loop started with setsid).
stop_group() {
    local pg="$1" i
    kill -0 -- "-$pg" 2>/dev/null || return 0
    kill -TERM -- "-$pg" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 -- "-$pg" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pg" 2>/dev/null || true
    wait "$pg" 2>/dev/null || true
}

on_exit() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${LOOP_PGIDS[@]}"; do stop_group "$p"; done
    for p in "${AGENT_PIDS[@]}"; do stop_pid "$p" || true; done
    [ -z "$EVENTS_PID" ] || stop_pid "$EVENTS_PID" || true
    remove_containers
    for p in "${CGROUPS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            rmdir "$p" 2>/dev/null && break
            sleep 0.5
        done
        [ ! -d "$p" ] || log "could not remove cgroup $p"
    done
    if [ "$rc" -ne 0 ]; then
        log "agent bench: FAILED (status $rc). Last lines of the logs:"
        for p in "$LOGS"/*.log; do
            [ -s "$p" ] || continue
            log "--- $p"
            tail -n 15 "$p" >&2 || true
        done
    fi
    if [ "$KEEP" = 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

# wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s until it succeeds; fail loudly after SECONDS.
wait_for() {
    local secs="$1" what="$2" deadline
    shift 2
    deadline=$(($(now_ms) + secs * 1000))
    until "$@"; do
        [ "$(now_ms)" -lt "$deadline" ] || die "timed out after ${secs}s waiting for: $what"
        sleep 0.1
    done
}

running_count() { dk ps -q --filter "label=$1" --filter status=running | wc -l; }
count_is() { [ "$(running_count "$1")" -eq "$2" ]; }

# event_after ACTION NAME_RE AFTER_NS [NOT_ID]: the first event ACTION of a container whose
# name matches NAME_RE (anchored), later than AFTER_NS, of another ID than NOT_ID:
# prints "ns id". Fails (returns 1) when there is none yet.
event_after() {
    awk -v a="$1" -v re="^($2)\$" -v t="$3" -v not="${4:-}" '
        $2 == a && $3 ~ re && $1 > t && (not == "" || $4 != not) { print $1, $4; found = 1; exit }
        END { exit !found }' "$EVENTS"
}

# wait_event ACTION NAME_RE AFTER_NS [NOT_ID]: the same, waiting up to TIMEOUT.
wait_event() {
    local deadline out
    deadline=$(($(now_ms) + TIMEOUT * 1000))
    while ! out="$(event_after "$@")"; do
        kill -0 "$EVENTS_PID" 2>/dev/null || die "docker events stopped (see $LOGS/events.log)"
        [ "$(now_ms)" -lt "$deadline" ] || die "no '$1' event of $2 within ${TIMEOUT}s"
        sleep 0.05
    done
    echo "$out"
}

start_events() {
    dk version >/dev/null || die "docker does not answer"
    docker events --filter type=container --filter event=die --filter event=start \
        --format '{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}} {{.ID}}' \
        >"$EVENTS" 2>"$LOGS/events.log" &
    EVENTS_PID=$!
    sleep 1
    kill -0 "$EVENTS_PID" 2>/dev/null || die "docker events did not start (see $LOGS/events.log)"
}

# A cgroup for CPU accounting: "v2 DIR" or "v1 DIR", or nothing when none can be made.
CG_KIND=""
CG_BASE=""
find_cgroup_base() {
    local m
    m="$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)"
    if [ -n "$m" ] && mkdir "$m/tendagentbench-probe-$$" 2>/dev/null; then
        rmdir "$m/tendagentbench-probe-$$"
        CG_KIND=v2
        CG_BASE="$m"
        return
    fi
    m="$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpuacct(,|$)/ { print $2; exit }' /proc/mounts)"
    if [ -n "$m" ] && mkdir "$m/tendagentbench-probe-$$" 2>/dev/null; then
        rmdir "$m/tendagentbench-probe-$$"
        CG_KIND=v1
        CG_BASE="$m"
    fi
}

# make_cgroup NAME: sets CG to its directory (empty when cgroups are not available).
CG=""
make_cgroup() {
    CG=""
    [ -n "$CG_KIND" ] || return 0
    CG="$CG_BASE/tendagentbench-$1-$$"
    mkdir "$CG" || die "could not create cgroup $CG"
    CGROUPS+=("$CG")
}

# cg_usec DIR: CPU microseconds used in the cgroup so far (all its processes, past and present).
cg_usec() {
    [ -n "$1" ] || { echo ""; return; }
    if [ "$CG_KIND" = v2 ]; then
        awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat"
    else
        echo $(($(cat "$1/cpuacct.usage") / 1000))
    fi
}

CLK_TCK="$(getconf CLK_TCK)"

# proc_ticks PID: utime + stime + cutime + cstime (clock ticks) of one process.
proc_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 + $14 + $15 }'
}

# session_ticks SID: the same, summed over every process of a session.
session_ticks() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v s="$1" '
        { n = split(substr($0, match($0, /\) [^)]*$/) + 2), f, " ") }
        n >= 15 && f[4] == s { t += f[12] + f[13] + f[14] + f[15] }
        END { print t + 0 }' || true
}

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# stats "v1,v2,...": median p90 min max mean n (p90 by nearest rank).
stats() {
    tr ',' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '
        { v[NR] = $1; s += $1 }
        END {
            n = NR; if (n == 0) { print "- - - - - 0"; exit }
            m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            k = int(0.9 * n); if (k < 0.9 * n) k++
            printf "%s %s %s %s %s %d\n", m, v[k], v[1], v[n], s / n, n
        }'
}

append() {
    local -n ref="$1"
    ref="${ref:+$ref,}$2"
}

spec() { # NAME SLEEP: a tend Service spec
    cat <<EOF
apiVersion: tend/v1
kind: Service
metadata: {name: $1}
spec:
  image: $TEND_DEMO_IMAGE
  pullPolicy: never
  command: ["sh", "-c", "trap 'exit 0' TERM; sleep ${2:-3600} & wait"]
EOF
}

compose_service() { # NAME SLEEP: a service of a compose file (the same container config)
    cat <<EOF
  $1:
    image: $TEND_DEMO_IMAGE
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep ${2:-3600} & wait"]
    network_mode: bridge
EOF
}

compose_limit() { # N: COMPOSE_PARALLEL_LIMIT that keeps compose 1.29 from deadlocking
    if [ "$1" -gt 32 ]; then echo $((2 * $1)); else echo 64; fi
}

# start_agent NAME CGROUP ARGS...: `tend agent ARGS` in the background (TEND_* from the
# environment of the caller), in CGROUP when given; sets AGENT_PID.
AGENT_PID=""
start_agent() {
    local name="$1" cg="$2"
    shift 2
    # shellcheck disable=SC2016 # expanded by the inner shell
    bash -c 'if [ -n "$1" ]; then echo $$ >"$1/cgroup.procs"; fi; shift; exec "$@"' _ "$cg" \
        "$TEND" agent "$@" >>"$LOGS/agent-$name.log" 2>&1 &
    AGENT_PID=$!
    AGENT_PIDS+=("$AGENT_PID")
    sleep 0.5
    kill -0 "$AGENT_PID" 2>/dev/null || die "tend agent ($name) exited at once (see $LOGS/agent-$name.log)"
    [ "$(cat "/proc/$AGENT_PID/comm")" = tend ] || die "pid $AGENT_PID is not tend"
}

# stop_agent PID NAME: SIGTERM; the agent must exit 0 within 15 s.
stop_agent() {
    local rc=0
    stop_pid "$1" || rc=$?
    [ "$rc" -eq 0 ] || die "tend agent ($2) exited with status $rc on SIGTERM (see $LOGS/agent-$2.log)"
    local p rest=()
    for p in "${AGENT_PIDS[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
    AGENT_PIDS=("${rest[@]}")
}

agent_status() { # SOCKET: tend status -o json of the agent behind it
    TEND_SOCKET="$1" timeout 20 "$TEND" status -o json 2>/dev/null || true
}

# ---------------------------------------------------------------- setup

banner "setup" >&2
for tool in docker docker-compose git jq awk timeout setsid; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (this script installs nothing)"
done
dk info >/dev/null 2>&1 || die "docker does not answer (start dockerd first)"
dk image inspect "$TEND_DEMO_IMAGE" >/dev/null 2>&1 ||
    die "the local image $TEND_DEMO_IMAGE is missing (scripts/lib.sh ensure_demo_image builds it)"
GNU_TIME=/usr/bin/time
[ -x "$GNU_TIME" ] || GNU_TIME=""
mkdir -p "$WORK/bin"
if [ -n "${BENCH_TEND:-}" ]; then
    cp "$BENCH_TEND" "$WORK/bin/tend"
    TEND_FROM="${BENCH_TEND_LABEL:-the binary $BENCH_TEND}"
else
    if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; fi
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed (or set BENCH_TEND to a tend binary)"
    cargo build --release -p tend --offline >&2 || die "cargo build failed"
    cp "$ROOT/target/release/tend" "$WORK/bin/tend"
    TEND_FROM="built from $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- agent specs Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
fi
# A copy: others may rebuild target/ during the run.
TEND="$WORK/bin/tend"
TEND_VERSION="$("$TEND" --version 2>/dev/null || echo '?'), sha256 $(sha256sum "$TEND" | cut -c1-12)"
find_cgroup_base
unset TEND_CONFIG TEND_SCOPE TEND_STATE_DIR TEND_SOCKET TEND_UNIT_DIR TEND_ENV_DIR
export TEND_LOG=warn
remove_containers
start_events

START="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
START_S="$(date +%s)"
OTHERS_AT_START="$(dk ps -q | wc -l)"
declare -A LOAD_BEFORE=() LOAD_AFTER=() SECS=() LOADS=()

# ---------------------------------------------------------------- repair

# probe_list_lag: how long after its `die` event the engine's container list (what a
# reconciler observes) still shows a killed container as running. LIST_PROBES containers
# without a restart policy, each killed once; the list is polled with curl on the socket
# (each call takes a few ms) until the container is no longer "running"; the figure is the
# end of the first call that says so, minus the die event: an upper bound.
probe_list_lag() {
    local sock="/var/run/docker.sock" i name pid t0 t1 die_ev lags="" q
    if [ "$LIST_PROBES" -eq 0 ] || ! command -v curl >/dev/null 2>&1 || [ ! -S "$sock" ]; then return 0; fi
    for ((i = 1; i <= LIST_PROBES; i++)); do
        dk run -d --name "$(printf 'bench-agent-q%03d' "$i")" --label "$PEER_LABEL" "$TEND_DEMO_IMAGE" \
            sh -c "trap 'exit 0' TERM; sleep 3600 & wait" >/dev/null
    done
    sleep 2
    for ((i = 1; i <= LIST_PROBES; i++)); do
        name="$(printf 'bench-agent-q%03d' "$i")"
        # {"name":["^/NAME$"]}
        q="http://localhost/containers/json?all=1&filters=%7B%22name%22%3A%5B%22%5E%2F$name%24%22%5D%7D"
        pid="$(dk inspect -f '{{.State.Pid}}' "$name")"
        t0="$(now_ns)"
        kill -KILL "$pid"
        until ! timeout 10 curl -sf --unix-socket "$sock" "$q" | grep -q '"State":"running"'; do
            [ $(($(now_ns) - t0)) -lt $((TIMEOUT * 1000000000)) ] || die "the list shows $name running ${TIMEOUT}s after its kill"
        done
        t1="$(now_ns)"
        die_ev="$(wait_event die "$name" "$t0")"
        append lags "$(((t1 - ${die_ev%% *}) / 1000000))"
        sleep 1
    done
    log "  the list showed a killed container as exited this many ms after its die event: $lags"
    record repair engine list-lag-ms "$lags"
}

section_repair() {
    local dir="$WORK/repair" i name n="$REPAIR_KILLS"
    mkdir -p "$dir/specs" "$dir/state"
    for ((i = 1; i <= 2 * n; i++)); do
        name="$(printf 'bench-agent-r%03d' "$i")"
        spec "$name" >"$dir/specs/$name.yaml"
    done
    log "$(date +%T) repair: starting the agent with $((2 * n)) services"
    TEND_SCOPE="$SCOPE" TEND_STATE_DIR="$dir/state" TEND_SOCKET="$dir/tend.sock" \
        TEND_UNIT_DIR="$dir/units" TEND_ENV_DIR="$dir/env" start_agent repair "" --specs "$dir/specs"
    local agent="$AGENT_PID"
    wait_for "$TIMEOUT" "$((2 * n)) running containers of scope $SCOPE" count_is "tend.scope=$SCOPE" $((2 * n))

    log "$(date +%T) repair: starting $n containers with --restart always"
    for ((i = 1; i <= n; i++)); do
        name="$(printf 'bench-agent-p%03d' "$i")"
        dk run -d --name "$name" --label "$PEER_LABEL" --restart always "$TEND_DEMO_IMAGE" \
            sh -c "trap 'exit 0' TERM; sleep 3600 & wait" >/dev/null
    done
    # The check: `docker kill` of a --restart always container (Docker counts it as stopped by hand).
    dk run -d --name bench-agent-pcheck --label "$PEER_LABEL" --restart always "$TEND_DEMO_IMAGE" \
        sh -c "trap 'exit 0' TERM; sleep 3600 & wait" >/dev/null
    wait_for "$TIMEOUT" "$((n + 1)) running peers" count_is "$PEER_LABEL" $((n + 1))
    # Docker's restart manager waits 100 ms before the first restart and resets its backoff
    # once a container has run 10 s; let everything run that long first.
    sleep 11
    dk kill bench-agent-pcheck >/dev/null
    sleep 5
    local pcheck
    pcheck="$(dk inspect -f '{{.State.Running}} restarts={{.RestartCount}}' bench-agent-pcheck)"
    log "  docker kill of a --restart always container, 5 s later: running=$pcheck"
    record repair docker-kill-check restart-always "$pcheck"
    dk rm -f bench-agent-pcheck >/dev/null
    wait_for "$TIMEOUT" "$((2 * n)) running containers of scope $SCOPE" count_is "tend.scope=$SCOPE" $((2 * n))

    # Kill i: tend's r(i) by SIGKILL, tend's r(n+i) by docker kill, peer p(i) by SIGKILL; the
    # order rotates with i.
    local subjects=(tend-sigkill tend-dockerkill docker-sigkill) k subj cname pid t0 die_ev start_ev
    declare -A total=() react=()
    local loads=""
    for ((i = 1; i <= n; i++)); do
        for ((k = 0; k < 3; k++)); do
            subj="${subjects[$(((i + k) % 3))]}"
            case "$subj" in
                tend-sigkill) cname="$(printf 'bench-agent-r%03d-1' "$i")" ;;
                tend-dockerkill) cname="$(printf 'bench-agent-r%03d-1' $((n + i)))" ;;
                docker-sigkill) cname="$(printf 'bench-agent-p%03d' "$i")" ;;
            esac
            pid="$(dk inspect -f '{{.State.Pid}}' "$cname")"
            [ "$pid" -gt 0 ] || die "$cname is not running before its kill"
            append loads "$(load1)"
            t0="$(now_ns)"
            if [ "$subj" = tend-dockerkill ]; then
                dk kill "$cname" >/dev/null
            else
                kill -KILL "$pid"
            fi
            die_ev="$(wait_event die "$cname" "$t0")"
            start_ev="$(wait_event start "$cname" "${die_ev%% *}")"
            wait_for 30 "$cname running again" \
                test "$(dk inspect -f '{{.State.Running}}' "$cname")" = true
            append "total[$subj]" "$(((${start_ev%% *} - t0) / 1000000))"
            append "react[$subj]" "$(((${start_ev%% *} - ${die_ev%% *}) / 1000000))"
            log "  $(date +%T) kill $i/$n $subj $cname: running again after $(((${start_ev%% *} - t0) / 1000000)) ms (die -> start $(((${start_ev%% *} - ${die_ev%% *}) / 1000000)) ms), load $(load1)"
            sleep "$REPAIR_GAP"
        done
    done
    for subj in "${subjects[@]}"; do
        record repair "$subj" kill-to-start-ms "${total[$subj]}"
        record repair "$subj" die-to-start-ms "${react[$subj]}"
    done
    LOADS[repair]="$loads"
    probe_list_lag
    wait_for "$TIMEOUT" "all of scope $SCOPE running after the kills" count_is "tend.scope=$SCOPE" $((2 * n))
    stop_agent "$agent" repair
    remove_label "tend.scope=$SCOPE"
    remove_label "$PEER_LABEL"
}

# ---------------------------------------------------------------- idle

section_idle() {
    local dir="$WORK/idle" i name n="$IDLE_N" limit
    limit="$(compose_limit "$n")"
    mkdir -p "$dir/specs" "$dir/state"
    printf 'version: "2.4"\nservices:\n' >"$dir/docker-compose.yml"
    for ((i = 1; i <= n; i++)); do
        name="$(printf 'i%03d' "$i")"
        spec "bench-agent-$name" >"$dir/specs/bench-agent-$name.yaml"
        compose_service "$name" >>"$dir/docker-compose.yml"
    done
    local cg_agent cg_loop
    make_cgroup agent
    cg_agent="$CG"
    make_cgroup compose
    cg_loop="$CG"

    log "$(date +%T) idle: starting the agent with $n services"
    TEND_SCOPE="$SCOPE" TEND_STATE_DIR="$dir/state" TEND_SOCKET="$dir/tend.sock" \
        TEND_UNIT_DIR="$dir/units" TEND_ENV_DIR="$dir/env" start_agent idle "$cg_agent" --specs "$dir/specs"
    local agent="$AGENT_PID" t0 t1
    t0="$(now_ms)"
    wait_for 600 "$n running containers of scope $SCOPE" count_is "tend.scope=$SCOPE" "$n"
    t1="$(now_ms)"
    log "  agent converged $n services in $((t1 - t0)) ms"
    record idle tend converge-ms "$((t1 - t0))"

    log "$(date +%T) idle: docker-compose up -d of $n services (COMPOSE_PARALLEL_LIMIT=$limit)"
    t0="$(now_ms)"
    COMPOSE_PARALLEL_LIMIT="$limit" timeout "$COMPOSE_TIMEOUT" docker-compose -p "$IDLE_PROJECT" \
        -f "$dir/docker-compose.yml" up -d >>"$LOGS/compose-idle.log" 2>&1 ||
        die "docker-compose up -d failed or hung (see $LOGS/compose-idle.log)"
    t1="$(now_ms)"
    record idle compose converge-ms "$((t1 - t0))"
    count_is "com.docker.compose.project=$IDLE_PROJECT" "$n" || die "compose did not start $n containers"
    # Let both settle: the agent's follow-up passes, compose's leftovers.
    sleep 10
    count_is "tend.scope=$SCOPE" "$n" || die "the agent no longer has $n running containers"

    # The window. The loop starts at its beginning; every run in it is a no-op.
    local passes0 passes1 ticks0 ticks1 cga0 cga1 w0 w1 samples="$dir/samples.tsv"
    passes0="$(agent_status "$dir/tend.sock" | jq -r '.agent.passes // empty')"
    [ -n "$passes0" ] || die "tend status did not answer from the agent (socket $dir/tend.sock)"
    ticks0="$(proc_ticks "$agent")"
    cga0="$(cg_usec "$cg_agent")"
    : >"$dir/runs.log"
    : >"$dir/iterations.log"
    w0="$(now_ns)"
    # The runbook loop, in a session (and process group) of its own, inside its cgroup.
    # shellcheck disable=SC2016 # expanded by the loop's shell
    COMPOSE_PARALLEL_LIMIT="$limit" setsid bash -c '
        if [ -n "$1" ]; then echo $$ >"$1/cgroup.procs"; fi
        while true; do
            if [ -n "$6" ]; then
                "$6" -f "%e %U %S %M" -a -o "$2/runs.log" timeout "$5" docker-compose -p "$3" -f "$2/docker-compose.yml" up -d
            else
                timeout "$5" docker-compose -p "$3" -f "$2/docker-compose.yml" up -d
            fi
            rc=$?
            echo "$(date +%s%N) $rc" >>"$2/iterations.log"
            sleep "$4"
        done' _ "$cg_loop" "$dir" "$IDLE_PROJECT" "$COMPOSE_SLEEP" "$COMPOSE_TIMEOUT" "$GNU_TIME" \
        >>"$LOGS/compose-loop-idle.log" 2>&1 &
    local loop=$!
    LOOP_PGIDS+=("$loop")
    log "$(date +%T) idle: window of ${IDLE_SECONDS}s, sampling every ${IDLE_SAMPLE}s"
    local end=$(($(now_ms) + IDLE_SECONDS * 1000)) t rss hwm loads="" left
    printf 't_s\trss_kB\thwm_kB\tagent_ticks\tcg_agent_us\tcg_loop_us\tloop_session_ticks\tload1\n' >"$samples"
    while :; do
        kill -0 "$agent" 2>/dev/null || die "the agent died during the idle window"
        kill -0 "$loop" 2>/dev/null || die "the compose loop died during the idle window"
        t=$((($(now_ns) - w0) / 1000000000))
        rss="$(status_kb "$agent" VmRSS)"
        hwm="$(status_kb "$agent" VmHWM)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rss" "$hwm" "$(proc_ticks "$agent")" \
            "$(cg_usec "$cg_agent")" "$(cg_usec "$cg_loop")" "$(session_ticks "$loop")" "$(load1)" >>"$samples"
        append loads "$(load1)"
        left=$((end - $(now_ms)))
        [ "$left" -gt 0 ] || break
        if [ "$left" -gt $((IDLE_SAMPLE * 1000)) ]; then left=$((IDLE_SAMPLE * 1000)); fi
        sleep "$(awk -v l="$left" 'BEGIN { printf "%.3f", l / 1000 }')"
    done
    # The end of the window: read everything at once, then stop the loop.
    local cgl1 sess1
    ticks1="$(proc_ticks "$agent")"
    cga1="$(cg_usec "$cg_agent")"
    cgl1="$(cg_usec "$cg_loop")"
    sess1="$(session_ticks "$loop")"
    w1="$(now_ns)"
    rss="$(status_kb "$agent" VmRSS)"
    hwm="$(status_kb "$agent" VmHWM)"
    passes1="$(agent_status "$dir/tend.sock" | jq -r '.agent.passes // empty')"
    [ -n "$passes1" ] || die "tend status did not answer from the agent at the end of the window"
    stop_group "$loop"
    LOOP_PGIDS=()

    local wall_s
    wall_s="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
    record idle window wall-s "$wall_s"
    record idle tend cpu-s-proc "$(awk -v a="$ticks0" -v b="$ticks1" -v h="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / h }')"
    [ -z "$cg_agent" ] || record idle tend cpu-s-cgroup "$(awk -v a="$cga0" -v b="$cga1" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')"
    [ -z "$cg_loop" ] || record idle compose cpu-s-cgroup "$(awk -v b="$cgl1" 'BEGIN { printf "%.3f", b / 1e6 }')"
    record idle compose cpu-s-session "$(awk -v b="$sess1" -v h="$CLK_TCK" 'BEGIN { printf "%.3f", b / h }')"
    record idle tend rss-end-kB "$rss"
    record idle tend hwm-end-kB "$hwm"
    record idle tend rss-samples-kB "$(awk -F'\t' 'NR > 1 { printf "%s%s", (NR > 2 ? "," : ""), $2 }' "$samples")"
    record idle tend passes "$((passes1 - passes0))"
    if [ -s "$dir/runs.log" ]; then
        # GNU time lines "%e %U %S %M" (some runs may have a "Command exited" line first).
        record idle compose run-wall-s "$(awk 'NF == 4 && $1 ~ /^[0-9.]+$/ { printf "%s%s", (n++ ? "," : ""), $1 }' "$dir/runs.log")"
        record idle compose run-cpu-s "$(awk 'NF == 4 && $1 ~ /^[0-9.]+$/ { printf "%s%s", (n++ ? "," : ""), $2 + $3 }' "$dir/runs.log")"
        record idle compose run-rss-kB "$(awk 'NF == 4 && $1 ~ /^[0-9.]+$/ { printf "%s%s", (n++ ? "," : ""), $4 }' "$dir/runs.log")"
    fi
    record idle compose runs "$(wc -l <"$dir/iterations.log")"
    record idle compose failed-runs "$(awk '$2 != 0' "$dir/iterations.log" | wc -l)"
    LOADS[idle]="$loads"
    cp "$samples" "$LOGS/idle-samples.tsv"

    count_is "tend.scope=$SCOPE" "$n" || die "the agent lost containers during the idle window"
    count_is "com.docker.compose.project=$IDLE_PROJECT" "$n" || die "compose lost containers during the idle window"
    stop_agent "$agent" idle
    remove_label "tend.scope=$SCOPE"
    remove_label "com.docker.compose.project=$IDLE_PROJECT"
}

# ---------------------------------------------------------------- commit

git_q() { git -c user.name=bench -c user.email=bench@localhost -c init.defaultBranch=main "$@"; }

# random_sleep MS: sleep a random time in [0, MS) milliseconds.
random_sleep() {
    sleep "$(awk -v r="$RANDOM" -v m="$1" 'BEGIN { printf "%.3f", (r / 32768) * m / 1000 }')"
}

# toggle FILE SERVICE_BLOCK_START_RE: sleep 3600 <-> 3601 in the block of one service.
toggle_sleep() {
    sed -i -e "$2"'{s/sleep 3600 /sleep X /; s/sleep 3601 /sleep 3600 /; s/sleep X /sleep 3601 /}' "$1"
}

section_commit() {
    local dir="$WORK/commit" i n="$COMMIT_N"
    mkdir -p "$dir/state"
    git_q init -q --bare "$dir/tend.git"
    git_q init -q --bare "$dir/compose.git"
    git_q clone -q "$dir/tend.git" "$dir/tend-src" 2>/dev/null
    git_q clone -q "$dir/compose.git" "$dir/compose-src" 2>/dev/null
    for ((i = 1; i <= n; i++)); do
        spec "$(printf 'bench-agent-g%03d' "$i")" >"$dir/tend-src/$(printf 'g%03d' "$i").yaml"
    done
    printf 'version: "2.4"\nservices:\n' >"$dir/compose-src/docker-compose.yml"
    for ((i = 1; i <= n; i++)); do compose_service "$(printf 'g%03d' "$i")" >>"$dir/compose-src/docker-compose.yml"; done
    git_q -C "$dir/tend-src" add -A
    git_q -C "$dir/tend-src" commit -qm "$n services"
    git_q -C "$dir/tend-src" push -q origin main
    git_q -C "$dir/compose-src" add -A
    git_q -C "$dir/compose-src" commit -qm "$n services"
    git_q -C "$dir/compose-src" push -q origin main
    git_q clone -q "$dir/compose.git" "$dir/compose-deploy" 2>/dev/null

    cat >"$dir/agent.yaml" <<EOF
scope: $GIT_SCOPE
source:
  git:
    url: file://$dir/tend.git
    branch: main
    interval: ${GIT_INTERVAL}s
stateDir: $dir/state
unitDir: $dir/units
envDir: $dir/env
socket: {path: $dir/tend.sock}
EOF
    log "$(date +%T) commit: starting the agent on file://$dir/tend.git (interval ${GIT_INTERVAL}s)"
    TEND_SOCKET="$dir/tend.sock" start_agent commit "" --config "$dir/agent.yaml"
    local agent="$AGENT_PID"
    wait_for "$TIMEOUT" "$n running containers of scope $GIT_SCOPE" count_is "tend.scope=$GIT_SCOPE" "$n"
    (cd "$dir/compose-deploy" && timeout "$COMPOSE_TIMEOUT" docker-compose -p "$GIT_PROJECT" up -d) \
        >>"$LOGS/compose-git.log" 2>&1 || die "docker-compose up -d failed (see $LOGS/compose-git.log)"
    wait_for "$TIMEOUT" "$n running containers of $GIT_PROJECT" count_is "com.docker.compose.project=$GIT_PROJECT" "$n"
    sleep 5

    local r t0 tp start_ev old new commit tend_ms="" compose_ms="" push_ms="" loads="" want args loop
    local tname=bench-agent-g001-1 cname="${GIT_PROJECT}_g001_1"
    for ((r = 1; r <= COMMIT_ROUNDS; r++)); do
        # tend
        old="$(dk inspect -f '{{.Id}}' "$tname")"
        toggle_sleep "$dir/tend-src/g001.yaml" '1,$'
        want="$(grep -o 'sleep 360[01]' "$dir/tend-src/g001.yaml")"
        git_q -C "$dir/tend-src" commit -qam "round $r"
        commit="$(git -C "$dir/tend-src" rev-parse HEAD)"
        random_sleep $((GIT_INTERVAL * 1000))
        append loads "$(load1)"
        t0="$(now_ns)"
        git_q -C "$dir/tend-src" push -q origin main
        tp="$(now_ns)"
        start_ev="$(wait_event start "${tname}(-next)?" "$t0" "$old")"
        new="${start_ev#* }"
        args="$(dk inspect -f '{{join .Args " "}}' "$new")"
        [[ "$args" == *"$want "* ]] || die "tend's new container runs '$args', expected $want"
        append tend_ms "$(((${start_ev%% *} - t0) / 1000000))"
        append push_ms "$(((tp - t0) / 1000000))"
        log "  $(date +%T) round $r tend: pushed in $(((tp - t0) / 1000000)) ms, new container started $(((${start_ev%% *} - t0) / 1000000)) ms after the push began"
        # shellcheck disable=SC2016 # expanded by the inner shell
        wait_for "$TIMEOUT" "the agent on commit ${commit:0:12}" \
            bash -c '[ "$(TEND_SOCKET="$1" timeout 20 "$2" status -o json 2>/dev/null | jq -r ".agent.commit // empty")" = "$3" ]' _ \
            "$dir/tend.sock" "$TEND" "$commit"
        wait_for "$TIMEOUT" "$n running of $GIT_SCOPE" count_is "tend.scope=$GIT_SCOPE" "$n"
        sleep 2

        # compose: the runbook loop, fresh, one iteration done before the push.
        : >"$dir/iterations.log"
        # shellcheck disable=SC2016 # expanded by the loop's shell
        setsid bash -c '
            cd "$1"
            while true; do
                s=$(date +%s%N)
                git pull -q --ff-only && timeout "$4" docker-compose -p "$2" up -d
                rc=$?
                echo "$s $(date +%s%N) $rc" >>"$5"
                sleep "$3"
            done' _ "$dir/compose-deploy" "$GIT_PROJECT" "$GIT_INTERVAL" "$COMPOSE_TIMEOUT" "$dir/iterations.log" \
            >>"$LOGS/compose-loop-git.log" 2>&1 &
        loop=$!
        LOOP_PGIDS+=("$loop")
        wait_for "$TIMEOUT" "a first iteration of the compose loop" test -s "$dir/iterations.log"
        old="$(dk inspect -f '{{.Id}}' "$cname")"
        toggle_sleep "$dir/compose-src/docker-compose.yml" '/^  g001:/,/^  g002:/'
        want="$(sed -n '/^  g001:/,/^  g002:/p' "$dir/compose-src/docker-compose.yml" | grep -o 'sleep 360[01]')"
        git_q -C "$dir/compose-src" commit -qam "round $r"
        # A random phase over one period of the loop (its last iteration plus the sleep).
        random_sleep "$(awk -v i="$GIT_INTERVAL" 'END { printf "%d", ($2 - $1) / 1e6 + i * 1000 }' "$dir/iterations.log")"
        append loads "$(load1)"
        t0="$(now_ns)"
        git_q -C "$dir/compose-src" push -q origin main
        tp="$(now_ns)"
        start_ev="$(wait_event start "$cname" "$t0" "$old")"
        new="${start_ev#* }"
        args="$(dk inspect -f '{{join .Args " "}}' "$new")"
        [[ "$args" == *"$want "* ]] || die "compose's new container runs '$args', expected $want"
        append compose_ms "$(((${start_ev%% *} - t0) / 1000000))"
        append push_ms "$(((tp - t0) / 1000000))"
        log "  $(date +%T) round $r compose: pushed in $(((tp - t0) / 1000000)) ms, new container started $(((${start_ev%% *} - t0) / 1000000)) ms after the push began"
        stop_group "$loop"
        LOOP_PGIDS=()
        wait_for "$TIMEOUT" "$n running of $GIT_PROJECT" count_is "com.docker.compose.project=$GIT_PROJECT" "$n"
        sleep 2
    done
    record commit tend push-to-start-ms "$tend_ms"
    record commit compose push-to-start-ms "$compose_ms"
    record commit both push-ms "$push_ms"
    LOADS[commit]="$loads"
    stop_agent "$agent" commit
    remove_label "tend.scope=$GIT_SCOPE"
    remove_label "com.docker.compose.project=$GIT_PROJECT"
}

# ---------------------------------------------------------------- run

for s in $SECTIONS; do
    banner "$s" >&2
    s0="$(date +%s)"
    LOAD_BEFORE[$s]="$(loadavg)"
    "section_$s"
    LOAD_AFTER[$s]="$(loadavg)"
    SECS[$s]=$(($(date +%s) - s0))
done
ELAPSED=$(($(date +%s) - START_S))

# ---------------------------------------------------------------- report

fmt_s() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f s", v / 1000 }'; }
fmt_mb() { awk -v v="$1" 'BEGIN { printf "%.1f MB", v / 1024 }'; }
pct() { awk -v c="$1" -v w="$2" 'BEGIN { printf "%.3f %%", 100 * c / w }'; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? "met" : "**not met**" }'; }
loadstat() { # csv of 1-min loads: "median (min–max)"
    read -r med _ min max _ _ <<<"$(stats "$1")"
    echo "$med ($min–$max)"
}

latency_row() { # LABEL CSV_MS
    local med p90 min max n
    read -r med p90 min max _ n <<<"$(stats "$2")"
    echo "| $1 | $(fmt_s "$med") | $(fmt_s "$p90") | $(fmt_s "$min") | $(fmt_s "$max") | $n |"
}

report() {
    echo "### Run of $START"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| machine | $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), $(free -m | awk '/^Mem:/ { printf "%.1f GiB", $2 / 1024 }') memory |"
    echo "| kernel | $(uname -sr) |"
    echo "| engine | Docker $(docker version --format '{{.Server.Version}}') (API $(docker version --format '{{.Server.APIVersion}}')), $(docker-compose --version) |"
    echo "| tend | $TEND_VERSION, $TEND_FROM |"
    echo "| run | sections: $SECTIONS; $ELAPSED s in all; $OTHERS_AT_START containers on the host at the start (other people's included) |"
    if [ -n "$CG_KIND" ]; then
        echo "| CPU accounting | cgroup $CG_KIND under $CG_BASE, and /proc |"
    else
        echo "| CPU accounting | /proc only (no cgroup could be created) |"
    fi
    echo
    local s
    echo "| section | seconds | load average before | load average after | 1-min load during (median, min–max) |"
    echo "|---|---:|---|---|---|"
    for s in $SECTIONS; do
        echo "| $s | ${SECS[$s]} | ${LOAD_BEFORE[$s]} | ${LOAD_AFTER[$s]} | $(loadstat "${LOADS[$s]}") |"
    done
    echo

    local med p90 min max n
    if [[ " $SECTIONS " == *" repair "* ]]; then
        echo "#### Drift repair: kill to running again"
        echo
        echo "| subject, kill | median | p90 | min | max | n |"
        echo "|---|---:|---:|---:|---:|---:|"
        latency_row "tend agent, SIGKILL of the process" "$(result repair tend-sigkill kill-to-start-ms)"
        latency_row "tend agent, \`docker kill\`" "$(result repair tend-dockerkill kill-to-start-ms)"
        latency_row "Docker \`--restart always\`, SIGKILL of the process" "$(result repair docker-sigkill kill-to-start-ms)"
        echo
        echo "The same, from the engine's \`die\` event to its \`start\` event (the reaction alone):"
        echo
        echo "| subject, kill | median | p90 | min | max | n |"
        echo "|---|---:|---:|---:|---:|---:|"
        latency_row "tend agent, SIGKILL" "$(result repair tend-sigkill die-to-start-ms)"
        latency_row "tend agent, \`docker kill\`" "$(result repair tend-dockerkill die-to-start-ms)"
        latency_row "Docker \`--restart always\`, SIGKILL" "$(result repair docker-sigkill die-to-start-ms)"
        echo
        echo "\`docker kill\` of a \`--restart always\` container, 5 s later: running=$(result repair docker-kill-check restart-always)."
        echo
        local lag
        lag="$(result repair engine list-lag-ms)"
        if [ -n "$lag" ]; then
            read -r med p90 min max _ n <<<"$(stats "$lag")"
            echo "The engine's container list showed a killed container as no longer running $med ms (median; min $min, max $max, n $n) after its \`die\` event (upper bound, polled with curl)."
            echo
        fi
    fi

    if [[ " $SECTIONS " == *" idle "* ]]; then
        local wall tcpu tcg ccg csess
        wall="$(result idle window wall-s)"
        tcpu="$(result idle tend cpu-s-proc)"
        tcg="$(result idle tend cpu-s-cgroup)"
        ccg="$(result idle compose cpu-s-cgroup)"
        csess="$(result idle compose cpu-s-session)"
        echo "#### Idle, $IDLE_N services, ${wall} s window"
        echo
        echo "| subject | CPU s in the window | CPU % of one CPU | how |"
        echo "|---|---:|---:|---|"
        echo "| tend agent | $tcpu | $(pct "$tcpu" "$wall") | /proc/PID/stat utime+stime+cutime+cstime |"
        [ -z "$tcg" ] || echo "| tend agent | $tcg | $(pct "$tcg" "$wall") | its cgroup |"
        [ -z "$ccg" ] || echo "| compose loop (\`up -d\`, sleep $COMPOSE_SLEEP) | $ccg | $(pct "$ccg" "$wall") | its cgroup |"
        echo "| compose loop | $csess | $(pct "$csess" "$wall") | /proc, its session's processes |"
        local rc
        rc="$(result idle compose run-cpu-s)"
        if [ -n "$rc" ]; then
            local sum
            sum="$(tr ',' '\n' <<<"$rc" | awk '{ s += $1 } END { printf "%.2f", s }')"
            echo "| compose loop | $sum | $(pct "$sum" "$wall") | GNU time of each run, summed (finished runs) |"
        fi
        echo
        local rs
        read -r med p90 min max _ n <<<"$(stats "$(result idle tend rss-samples-kB)")"
        rs="$max"
        echo "| figure | value |"
        echo "|---|---:|"
        echo "| agent VmRSS at the end | $(fmt_mb "$(result idle tend rss-end-kB)") |"
        echo "| agent VmRSS, max of $n samples in the window (median) | $(fmt_mb "$rs") ($(fmt_mb "$med")) |"
        echo "| agent VmHWM at the end (peak since its start, initial converge included) | $(fmt_mb "$(result idle tend hwm-end-kB)") |"
        echo "| agent passes in the window | $(result idle tend passes) |"
        echo "| agent initial converge of $IDLE_N | $(fmt_s "$(result idle tend converge-ms)") |"
        echo "| compose initial \`up -d\` of $IDLE_N | $(fmt_s "$(result idle compose converge-ms)") |"
        echo "| compose runs in the window (failed) | $(result idle compose runs) ($(result idle compose failed-runs)) |"
        if [ -n "$rc" ]; then
            read -r med _ min max _ n <<<"$(stats "$(result idle compose run-wall-s)")"
            echo "| compose run, wall (median, min–max) | $med s ($min–$max s) |"
            read -r med _ min max _ n <<<"$(stats "$rc")"
            echo "| compose run, CPU (median, min–max) | $med s ($min–$max s) |"
            read -r med _ min max _ n <<<"$(stats "$(result idle compose run-rss-kB)")"
            echo "| compose run, peak RSS (median, max) | $(fmt_mb "$med") ($(fmt_mb "$max")) |"
        fi
        echo
    fi

    if [[ " $SECTIONS " == *" commit "* ]]; then
        echo "#### Commit to converged, one service of $COMMIT_N, polling every ${GIT_INTERVAL} s"
        echo
        echo "| subject | median | p90 | min | max | n |"
        echo "|---|---:|---:|---:|---:|---:|"
        latency_row "tend agent, git source \`interval: ${GIT_INTERVAL}s\`" "$(result commit tend push-to-start-ms)"
        latency_row "loop: \`git pull && docker-compose up -d; sleep $GIT_INTERVAL\`" "$(result commit compose push-to-start-ms)"
        latency_row "(\`git push\` itself, in both)" "$(result commit both push-ms)"
        echo
    fi

    echo "#### Targets (issue 4)"
    echo
    echo "| target | figure | result |"
    echo "|---|---|---|"
    if [[ " $SECTIONS " == *" repair "* ]]; then
        local k
        for k in tend-sigkill tend-dockerkill; do
            read -r med p90 _ max _ n <<<"$(stats "$(result repair "$k" kill-to-start-ms)")"
            echo "| drift repair ≤ 1 s, median ($k) | $(fmt_s "$med") (p90 $(fmt_s "$p90"), max $(fmt_s "$max"), n $n) | $(verdict "$med" 1000) |"
        done
    fi
    if [[ " $SECTIONS " == *" idle "* ]]; then
        local rmax cpu
        read -r _ _ _ rmax _ _ <<<"$(stats "$(result idle tend rss-samples-kB)")"
        cpu="$(awk -v c="$(result idle tend cpu-s-proc)" -v w="$(result idle window wall-s)" 'BEGIN { printf "%.4f", 100 * c / w }')"
        echo "| idle RSS ≤ 15 MB (max VmRSS in the window) | $(fmt_mb "$rmax") | $(verdict "$rmax" 15360) |"
        echo "| idle CPU ≤ 0.2 % over $(result idle window wall-s) s | $cpu % | $(verdict "$cpu" 0.2) |"
    fi
    echo
    echo "Reproduce: \`bash scripts/bench/agent.sh\` (\`BENCH_SECTIONS=\"$SECTIONS\"\`, \`BENCH_IDLE_SECONDS=$IDLE_SECONDS\`, \`BENCH_REPAIR_KILLS=$REPAIR_KILLS\`, \`BENCH_COMMIT_ROUNDS=$COMMIT_ROUNDS\`, \`BENCH_GIT_INTERVAL=$GIT_INTERVAL\`)."
}

report | tee "$WORK/report.md"
