#!/usr/bin/env bash
# tend beside docker-compose (and beside the bare Engine API) on identical definitions.
#
#     bash scripts/bench/compose-vs-tend.sh                 # N = 20 50 100, ~13 minutes
#     BENCH_NS="20" bash scripts/bench/compose-vs-tend.sh   # a quick look, ~2 minutes
#
# (Times on a 2-CPU host busy with other builds, plus the build; see docs/BENCHMARKS.md.)
#
# For each N it generates N busybox services (`sleep 1000000`, stop timeout 1s, no
# ports, the default bridge network) twice: as tend specs (one file per service, scope
# `bench`, a state directory of their own) and as one docker-compose.yml (project
# `tendbench`, `network_mode: bridge` so both tools run the very same container config).
# Then it measures, on this host:
#
#   initial converge  from nothing: `tend apply`, the raw API baseline
#                     (agent/examples/raw_create.rs at each concurrency; the best median
#                     is the baseline) and `docker-compose up -d`; the runs are
#                     interleaved round by round (the order rotating), so drifting
#                     background load hits all alike. Every run is timed from process
#                     start to exit, and its containers are removed before the next one
#   no-op             converged: `tend apply`, `tend plan`, one bare list call of the
#                     engine with curl (unfiltered, and label-filtered as tend lists), and
#                     `docker-compose up -d`
#   change one        edit one service's command, then apply / up -d
#   repair one        `docker rm -f` one container, then apply / up -d
#   peak RSS          of `tend apply` (GNU time %M), initial converge and no-op
#
# It prints a markdown report on stdout (also saved as report.md in the work directory,
# with every sample in samples.tsv and hyperfine's JSON). Progress goes to stderr.
#
# It only ever removes containers carrying its own labels: tend.scope=bench (tend's),
# com.docker.compose.project=tendbench (compose's) and tendbench.raw=1 (raw_create's).
# Nothing is pulled. Knobs (environment):
#
#   BENCH_NS              sizes                                   "20 50 100"
#   BENCH_ROUNDS          initial converge: runs of tend and of raw at
#                         tend's default concurrency (8)                5
#   BENCH_SWEEP_ROUNDS    runs of raw at the other concurrencies (not 1),
#                         and of BENCH_TEND_PARALLEL                    2
#   BENCH_SERIAL_ROUNDS   runs of raw at concurrency 1                  1
#   BENCH_COMPOSE_INIT_ROUNDS  runs of compose from nothing             1
#   BENCH_CONCURRENCY     raw_create concurrencies                "1 4 8 16"
#   BENCH_TEND_PARALLEL   extra subjects `tend apply --parallel P`      "" (e.g. "4 16")
#   BENCH_NOOP_RUNS       hyperfine runs of tend / curl no-op           20 (+3 warmup)
#   BENCH_COMPOSE_RUNS    hyperfine runs of compose no-op               5 (+1 warmup)
#   BENCH_CHANGE_RUNS     hyperfine runs of change / repair             5 (+1 warmup for tend)
#
# docker-compose 1.29 can deadlock when a project has more services than its parallel
# limit (64; docker/compose#5864, #7486, #8226: the per-service threads hold every permit
# the per-container threads need). For N > 32 COMPOSE_PARALLEL_LIMIT is set to 2N (unless
# set), and every compose call runs under `timeout`, so a hang fails the run loudly.
#   BENCH_TEND            a tend binary to measure instead of this tree's (e.g. one built
#                         from an older commit, to compare before and after a change)
#   BENCH_DIR             work directory                          a new /tmp/tendbench.*
#   BENCH_KEEP=1          leave the last containers running at exit
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

NS="${BENCH_NS:-20 50 100}"
ROUNDS="${BENCH_ROUNDS:-5}"
SWEEP_ROUNDS="${BENCH_SWEEP_ROUNDS:-2}"
SERIAL_ROUNDS="${BENCH_SERIAL_ROUNDS:-1}"
COMPOSE_INIT_ROUNDS="${BENCH_COMPOSE_INIT_ROUNDS:-1}"
TEND_DEFAULT_PARALLEL=8 # `tend apply --parallel` default
COMPOSE_TIMEOUT=300     # seconds; compose 1.29 can hang (see above)
CONCURRENCY="${BENCH_CONCURRENCY:-1 4 8 16}"
TEND_PARALLEL="${BENCH_TEND_PARALLEL:-}"
NOOP_RUNS="${BENCH_NOOP_RUNS:-20}"
COMPOSE_RUNS="${BENCH_COMPOSE_RUNS:-5}"
CHANGE_RUNS="${BENCH_CHANGE_RUNS:-5}"
WORK="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/tendbench.XXXXXX")}"
mkdir -p "$WORK"

SCOPE=bench
PROJECT=tendbench
TEND_LABEL="tend.scope=$SCOPE"
COMPOSE_LABEL="com.docker.compose.project=$PROJECT"
RAW_LABEL="tendbench.raw=1"
SOCK=/var/run/docker.sock
LIST_URL="http://localhost/v1.41/containers/json?all=1"
# {"label":["tend.scope=bench"]}, the filter tend's observe sends.
LIST_FILTERED_URL="$LIST_URL&filters=%7B%22label%22%3A%5B%22tend.scope%3D$SCOPE%22%5D%7D"

SAMPLES="$WORK/samples.tsv" # N, scenario, subject, comma-separated milliseconds (or kB)
: >"$SAMPLES"
LOGS="$WORK/logs"
mkdir -p "$LOGS"

# ---------------------------------------------------------------- setup

banner "setup: packages, Docker, demo image, build" >&2
mapfile -t PKGS < <(build_pkgs)
need_pkgs "${PKGS[@]}" hyperfine time jq curl docker-compose
ensure_rust >&2
ensure_docker
ensure_demo_image >/dev/null
cargo build --release -p tend --bins --examples >&2
TEND="${BENCH_TEND:-$ROOT/target/release/tend}"
RAW="$ROOT/target/release/examples/raw_create"
if [ ! -x "$TEND" ] || [ ! -x "$RAW" ]; then die "the build did not produce $TEND and $RAW"; fi
GNU_TIME=/usr/bin/time
[ -x "$GNU_TIME" ] || die "GNU time is not at $GNU_TIME"

# ---------------------------------------------------------------- helpers

now_ns() { date +%s%N; }

# remove_label LABEL: force-remove every container carrying LABEL (ours only).
remove_label() {
    local ids
    ids="$(docker ps -aq --filter "label=$1")"
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086 # a list of IDs
        docker rm -f $ids >/dev/null
    fi
}

cleanup_all() {
    remove_label "$TEND_LABEL"
    remove_label "$COMPOSE_LABEL"
    remove_label "$RAW_LABEL"
}

on_exit() {
    local rc=$?
    if [ "${BENCH_KEEP:-}" != 1 ]; then
        cleanup_all || true
    fi
    [ "$rc" -eq 0 ] || log "compose-vs-tend: failed (status $rc); logs in $LOGS"
}
trap on_exit EXIT

# running LABEL: how many containers with LABEL are running.
running() { docker ps -q --filter "label=$1" --filter status=running | wc -l; }

# expect_running LABEL N WHAT: fail loudly unless exactly N containers with LABEL run.
expect_running() {
    local got
    got="$(running "$1")"
    [ "$got" -eq "$2" ] || die "$3: expected $2 running containers labelled $1, found $got (logs in $LOGS)"
}

# record N SCENARIO SUBJECT CSV
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }

# append VAR VALUE: add VALUE to the comma list in the variable named VAR.
append() {
    local -n ref="$1"
    ref="${ref:+$ref,}$2"
}

# from_hyperfine N SCENARIO JSON NAME...: record hyperfine's samples (ms), one NAME per command.
from_hyperfine() {
    local n="$1" scenario="$2" json="$3" i=0 name
    shift 3
    for name in "$@"; do
        record "$n" "$scenario" "$name" "$(jq -r ".results[$i].times | map(. * 1000 * 10 | round / 10) | join(\",\")" "$json")"
        i=$((i + 1))
    done
}

# stats CSV: "median min max mean sd count" of the numbers.
stats() {
    tr ',' '\n' <<<"$1" | sort -g | awk '
        { v[NR] = $1; s += $1; ss += $1 * $1 }
        END {
            n = NR; m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            mean = s / n; var = (n > 1) ? (ss - n * mean * mean) / (n - 1) : 0
            if (var < 0) var = 0
            printf "%s %s %s %s %s %d\n", m, v[1], v[n], mean, sqrt(var), n
        }'
}

# median_of N SCENARIO SUBJECT
median_of() {
    local csv
    csv="$(awk -F'\t' -v n="$1" -v s="$2" -v t="$3" '$1 == n && $2 == s && $3 == t { print $4 }' "$SAMPLES" | tail -n1)"
    [ -n "$csv" ] || return 1
    stats "$csv" | awk '{ print $1 }'
}

# ---------------------------------------------------------------- definitions

# gen N: tend specs in $WORK/N/specs, compose file in $WORK/N/docker-compose.yml.
gen() {
    local n="$1" dir="$WORK/$1" i name
    rm -rf "$dir"
    mkdir -p "$dir/specs" "$dir/state"
    {
        echo 'version: "2.4"'
        echo 'services:'
    } >"$dir/docker-compose.yml"
    for i in $(seq 1 "$n"); do
        name="$(printf 'svc-%03d' "$i")"
        cat >"$dir/specs/$name.yaml" <<EOF
apiVersion: tend/v1
kind: Service
metadata: {name: $name}
spec:
  image: $TEND_DEMO_IMAGE
  pullPolicy: never
  command: ["sleep", "1000000"]
  stopTimeout: 1s
EOF
        cat >>"$dir/docker-compose.yml" <<EOF
  $name:
    image: $TEND_DEMO_IMAGE
    command: ["sleep", "1000000"]
    stop_grace_period: 1s
    network_mode: bridge
EOF
    done
    # Toggles of svc-001's command (sleep 1000000 <-> 1000001), for "change one".
    cat >"$dir/toggle-tend.sh" <<EOF
sed -i -e 's/"1000000"/"X"/; s/"1000001"/"1000000"/; s/"X"/"1000001"/' '$dir/specs/svc-001.yaml'
EOF
    cat >"$dir/toggle-compose.sh" <<EOF
sed -i -e '/^  svc-001:/,/^  svc-002:/{s/"1000000"/"X"/; s/"1000001"/"1000000"/; s/"X"/"1000001"/}' '$dir/docker-compose.yml'
EOF
    cat >"$dir/kill-tend.sh" <<EOF
docker rm -f svc-001-1 >/dev/null
EOF
    cat >"$dir/kill-compose.sh" <<EOF
docker rm -f ${PROJECT}_svc-001_1 >/dev/null
EOF
}

# ---------------------------------------------------------------- initial converge

# compose with a parallel limit it cannot deadlock on, under a timeout.
compose() {
    local n="$1"
    shift
    local limit="${COMPOSE_PARALLEL_LIMIT:-}"
    if [ -z "$limit" ] && [ "$n" -gt 32 ]; then limit=$((2 * n)); fi
    env ${limit:+COMPOSE_PARALLEL_LIMIT=$limit} timeout "$COMPOSE_TIMEOUT" \
        docker-compose -p "$PROJECT" -f "$WORK/$n/docker-compose.yml" "$@"
}

# The same as a command line for hyperfine (no shell).
compose_cmd() {
    local n="$1" limit="${COMPOSE_PARALLEL_LIMIT:-}"
    if [ -z "$limit" ] && [ "$n" -gt 32 ]; then limit=$((2 * n)); fi
    echo "env ${limit:+COMPOSE_PARALLEL_LIMIT=$limit }timeout $COMPOSE_TIMEOUT docker-compose -p $PROJECT -f $WORK/$n/docker-compose.yml up -d"
}

# Initial-converge samples of the current N, by subject (comma lists), and tend's peak RSS.
declare -A INIT=()
RSS_INIT=""
LAST_MS=0

# converge_once N SUBJECT: one timed run from nothing; sets LAST_MS to the wall
# milliseconds (process start to exit) and adds it to INIT[SUBJECT]. Leaves it running.
converge_once() {
    local n="$1" subject="$2" dir="$WORK/$1" t0 t1 log="$LOGS/converge-$1-$2.log"
    case "$subject" in
        tend | tend-p*)
            local par=()
            [ "$subject" = tend ] || par=(--parallel "${subject#tend-p}")
            rm -rf "$dir/state"
            t0="$(now_ns)"
            "$GNU_TIME" -f '%M' -o "$dir/rss" "$TEND" --scope "$SCOPE" --state-dir "$dir/state" \
                apply "${par[@]}" "$dir/specs" >>"$log" 2>&1 || die "tend apply failed (see $log)"
            t1="$(now_ns)"
            expect_running "$TEND_LABEL" "$n" "tend apply"
            if [ "$subject" = tend ]; then append RSS_INIT "$(cat "$dir/rss")"; fi
            ;;
        raw-c*)
            t0="$(now_ns)"
            "$RAW" "$n" "${subject#raw-c}" rawbench "$RAW_LABEL" "$TEND_DEMO_IMAGE" >>"$log" 2>&1 ||
                die "raw_create failed (see $log)"
            t1="$(now_ns)"
            expect_running "$RAW_LABEL" "$n" "raw_create"
            ;;
        compose)
            t0="$(now_ns)"
            compose "$n" up -d >>"$log" 2>&1 || die "docker-compose up -d failed or hung (see $log)"
            t1="$(now_ns)"
            expect_running "$COMPOSE_LABEL" "$n" "docker-compose up -d"
            ;;
        *) die "unknown subject $subject" ;;
    esac
    LAST_MS=$(((t1 - t0) / 1000000))
    INIT[$subject]="${INIT[$subject]:+${INIT[$subject]},}$LAST_MS"
    log "  $(date +%T) N=$n $subject from nothing: $LAST_MS ms"
}

label_of() {
    case "$1" in
        tend*) echo "$TEND_LABEL" ;;
        raw-c*) echo "$RAW_LABEL" ;;
        compose) echo "$COMPOSE_LABEL" ;;
    esac
}

# The subjects of the initial converge, in a base order: tend right next to raw at tend's
# own concurrency, so that each round measures the two close together in time.
subjects() {
    local c p
    echo tend
    for c in $CONCURRENCY; do
        if [ "$c" -eq "$TEND_DEFAULT_PARALLEL" ]; then echo "raw-c$c"; fi
    done
    for p in $TEND_PARALLEL; do echo "tend-p$p"; done
    for c in $CONCURRENCY; do
        if [ "$c" -ne "$TEND_DEFAULT_PARALLEL" ]; then echo "raw-c$c"; fi
    done
    echo compose
}

# converge N: interleaved rounds, the order rotating each round (tend and raw at its
# concurrency stay side by side); every run but the very
# last of tend is removed right after. Compose runs COMPOSE_INIT_ROUNDS-1 times here; its
# last run from nothing sets up the compose phase.
converge() {
    local n="$1" r subj c p i
    declare -A runs=()
    local order
    mapfile -t order < <(subjects)
    runs[tend]="$ROUNDS"
    for p in $TEND_PARALLEL; do
        runs["tend-p$p"]="$SWEEP_ROUNDS"
    done
    for c in $CONCURRENCY; do
        if [ "$c" -eq 1 ]; then
            runs["raw-c$c"]="$SERIAL_ROUNDS"
        elif [ "$c" -eq "$TEND_DEFAULT_PARALLEL" ]; then
            runs["raw-c$c"]="$ROUNDS"
        else
            runs["raw-c$c"]="$SWEEP_ROUNDS"
        fi
    done
    runs[compose]=$((COMPOSE_INIT_ROUNDS - 1))
    local k=${#order[@]}
    for ((r = 0; r < ROUNDS; r++)); do
        local this=()
        for ((i = 0; i < k; i++)); do
            subj="${order[$(((i + k - r % k) % k))]}" # rotate right: tend stays just before raw
            if [ "$r" -lt "${runs[$subj]}" ] && { [ "$subj" != tend ] || [ "$r" -lt $((ROUNDS - 1)) ]; }; then
                this+=("$subj")
            fi
        done
        # The last round ends with tend, which is left running for the steady phase.
        if [ "$r" -eq $((ROUNDS - 1)) ]; then this+=(tend); fi
        for subj in "${this[@]}"; do
            converge_once "$n" "$subj"
            if [ "$subj" = tend ] && [ "$r" -eq $((ROUNDS - 1)) ]; then continue; fi
            remove_label "$(label_of "$subj")"
        done
    done
}

# ---------------------------------------------------------------- the rest, per N

steady_tend() {
    local n="$1" dir="$WORK/$1" t=("$TEND" --scope "$SCOPE" --state-dir "$WORK/$1/state")
    local tcmd="${t[*]}" out
    expect_running "$TEND_LABEL" "$n" "tend apply"
    out="$("${t[@]}" apply "$dir/specs")"
    grep -q '^No changes' <<<"$out" || die "a second tend apply was not a no-op (N=$n): $out"
    "${t[@]}" plan "$dir/specs" >/dev/null || die "tend plan is not empty on a converged host (N=$n)"

    log "  $(date +%T) N=$n no-op: tend apply, tend plan, bare list calls"
    hyperfine -N --style none --warmup 3 --runs "$NOOP_RUNS" --export-json "$dir/noop-tend.json" \
        "$tcmd apply $dir/specs" \
        "$tcmd plan $dir/specs" \
        "curl -s --unix-socket $SOCK '$LIST_URL'" \
        "curl -s --unix-socket $SOCK '$LIST_FILTERED_URL'" >"$LOGS/hyperfine-noop-$n.txt" 2>&1
    from_hyperfine "$n" noop "$dir/noop-tend.json" tend "tend plan" "list (curl)" "list, filtered (curl)"

    local rss="" i
    for i in 1 2 3 4 5; do
        "$GNU_TIME" -f '%M' -o "$dir/rss" "${t[@]}" apply "$dir/specs" >/dev/null
        append rss "$(cat "$dir/rss")"
    done
    record "$n" rss-noop tend "$rss"

    log "  $(date +%T) N=$n change one / repair one: tend"
    hyperfine -N --style none --warmup 1 --runs "$CHANGE_RUNS" --export-json "$dir/change-tend.json" \
        --prepare "bash $dir/toggle-tend.sh" "$tcmd apply $dir/specs" >"$LOGS/hyperfine-change-tend-$n.txt" 2>&1
    from_hyperfine "$n" change "$dir/change-tend.json" tend
    expect_running "$TEND_LABEL" "$n" "tend after change"
    hyperfine -N --style none --warmup 1 --runs "$CHANGE_RUNS" --export-json "$dir/repair-tend.json" \
        --prepare "bash $dir/kill-tend.sh" "$tcmd apply $dir/specs" >"$LOGS/hyperfine-repair-tend-$n.txt" 2>&1
    from_hyperfine "$n" repair "$dir/repair-tend.json" tend
    expect_running "$TEND_LABEL" "$n" "tend after repair"
    out="$("${t[@]}" apply "$dir/specs")"
    grep -q '^No changes' <<<"$out" || die "tend did not converge after change/repair (N=$n): $out"
    remove_label "$TEND_LABEL"
}

steady_compose() {
    local n="$1" dir="$WORK/$1" ccmd
    ccmd="$(compose_cmd "$n")"
    if [ "$COMPOSE_INIT_ROUNDS" -ge 1 ]; then
        converge_once "$n" compose # the last compose run from nothing
    else
        compose "$n" up -d >>"$LOGS/steady-$n.log" 2>&1 || die "docker-compose up -d failed or hung"
    fi
    expect_running "$COMPOSE_LABEL" "$n" "docker-compose up -d"

    log "  $(date +%T) N=$n no-op: docker-compose up -d"
    hyperfine -N --style none --warmup 1 --runs "$COMPOSE_RUNS" --export-json "$dir/noop-compose.json" \
        "$ccmd" >"$LOGS/hyperfine-noop-compose-$n.txt" 2>&1
    from_hyperfine "$n" noop "$dir/noop-compose.json" compose

    log "  $(date +%T) N=$n change one / repair one: docker-compose"
    hyperfine -N --style none --runs "$CHANGE_RUNS" --export-json "$dir/change-compose.json" \
        --prepare "bash $dir/toggle-compose.sh" "$ccmd" >"$LOGS/hyperfine-change-compose-$n.txt" 2>&1
    from_hyperfine "$n" change "$dir/change-compose.json" compose
    hyperfine -N --style none --runs "$CHANGE_RUNS" --export-json "$dir/repair-compose.json" \
        --prepare "bash $dir/kill-compose.sh" "$ccmd" >"$LOGS/hyperfine-repair-compose-$n.txt" 2>&1
    from_hyperfine "$n" repair "$dir/repair-compose.json" compose
    expect_running "$COMPOSE_LABEL" "$n" "docker-compose after change/repair"
    remove_label "$COMPOSE_LABEL"
}

# record_init N: the initial-converge samples of N, and tend's time over raw's at tend's
# concurrency round by round (run i of one beside run i of the other).
record_init() {
    local n="$1" subj raw="raw-c$TEND_DEFAULT_PARALLEL"
    while read -r subj; do
        if [ -n "${INIT[$subj]:-}" ]; then record "$n" initial "$subj" "${INIT[$subj]}"; fi
    done < <(subjects)
    if [ -n "$RSS_INIT" ]; then record "$n" rss-initial tend "$RSS_INIT"; fi
    if [ -n "${INIT[tend]:-}" ] && [ -n "${INIT[$raw]:-}" ]; then
        record "$n" paired "tend/$raw" "$(awk -v a="${INIT[tend]}" -v b="${INIT[$raw]}" 'BEGIN {
            n = split(a, x, ","); m = split(b, y, ","); if (m < n) n = m
            for (i = 1; i <= n; i++) printf "%s%.3f", (i > 1 ? "," : ""), x[i] / y[i] }')"
    fi
}

# ---------------------------------------------------------------- run

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

START="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
START_S="$(date +%s)"
declare -A LOAD_BEFORE=() LOAD_AFTER=() SECONDS_N=()
cleanup_all
for n in $NS; do
    banner "N=$n" >&2
    s0="$(date +%s)"
    LOAD_BEFORE[$n]="$(loadavg)"
    gen "$n"
    INIT=()
    RSS_INIT=""
    converge "$n"
    steady_tend "$n"
    steady_compose "$n"
    record_init "$n"
    LOAD_AFTER[$n]="$(loadavg)"
    SECONDS_N[$n]=$(($(date +%s) - s0))
done
ELAPSED=$(($(date +%s) - START_S))

# ---------------------------------------------------------------- report

fmt_ms() { awk -v v="$1" 'BEGIN { if (v >= 1000) printf "%.2f s", v / 1000; else if (v >= 100) printf "%.0f ms", v; else printf "%.1f ms", v }'; }
fmt_mb() { awk -v v="$1" 'BEGIN { printf "%.1f MB", v / 1024 }'; }

# shellcheck disable=SC2016 # backquotes are markdown
subject_name() {
    case "$1" in
        tend) echo '`tend apply`' ;;
        "tend plan") echo '`tend plan`' ;;
        tend-p*) echo "\`tend apply --parallel ${1#tend-p}\`" ;;
        raw-c*) echo "raw API, concurrency ${1#raw-c}" ;;
        compose) echo '`docker-compose up -d`' ;;
        *) echo "$1" ;;
    esac
}

scenario_name() {
    case "$1" in
        initial) echo "initial converge" ;;
        noop) echo "no-op" ;;
        change) echo "change one" ;;
        repair) echo "repair one" ;;
        rss-initial) echo "peak RSS, initial" ;;
        rss-noop) echo "peak RSS, no-op" ;;
    esac
}

best_raw() { # N -> "subject median"
    local n="$1" subj m best="" bm=""
    for c in $CONCURRENCY; do
        subj="raw-c$c"
        m="$(median_of "$n" initial "$subj")" || continue
        if [ -z "$bm" ] || awk -v a="$m" -v b="$bm" 'BEGIN { exit !(a < b) }'; then
            best="$subj"
            bm="$m"
        fi
    done
    echo "$best $bm"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
meets() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { ok = (op == "<=") ? (a <= b) : (a >= b); print ok ? "met" : "**not met**" }'; }

report() {
    echo "## Run of $START"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| machine | $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), $(free -m | awk '/^Mem:/ { printf "%.1f GiB", $2 / 1024 }') memory |"
    echo "| kernel | $(uname -sr) |"
    echo "| engine | $(dockerd --version) (API $(docker version --format '{{.Server.APIVersion}}')), storage $(docker info --format '{{.Driver}}') |"
    echo "| compose | $(docker-compose --version) |"
    echo "| tend | $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- agent specs Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes') |"
    echo "| date | $START, $ELAPSED s in all |"
    echo "| compose parallel limit | ${COMPOSE_PARALLEL_LIMIT:-64 (default) for N ≤ 32, 2N above} |"
    echo
    for n in $NS; do
        echo "### N = $n"
        echo
        echo "load average (1, 5, 15 min) before: ${LOAD_BEFORE[$n]}, after: ${LOAD_AFTER[$n]}; ${SECONDS_N[$n]} s"
        echo
        echo "| scenario | subject | median | min | max | σ | runs |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        local scen subj csv
        for scen in initial noop change repair rss-initial rss-noop; do
            while IFS=$'\t' read -r subj csv; do
                read -r med min max _ sd cnt <<<"$(stats "$csv")"
                if [[ "$scen" == rss-* ]]; then
                    echo "| $(scenario_name "$scen") | $(subject_name "$subj") | $(fmt_mb "$med") | $(fmt_mb "$min") | $(fmt_mb "$max") | $(fmt_mb "$sd") | $cnt |"
                else
                    echo "| $(scenario_name "$scen") | $(subject_name "$subj") | $(fmt_ms "$med") | $(fmt_ms "$min") | $(fmt_ms "$max") | $(fmt_ms "$sd") | $cnt |"
                fi
            done < <(awk -F'\t' -v n="$n" -v s="$scen" '$1 == n && $2 == s { print $3 "\t" $4 }' "$SAMPLES")
        done
        echo
    done

    echo "### Targets (medians)"
    echo
    echo "| N | target | figure | result |"
    echo "|---:|---|---|---|"
    for n in $NS; do
        local t c l lf bname bm r m
        t="$(median_of "$n" noop tend)"
        c="$(median_of "$n" noop compose)"
        l="$(median_of "$n" noop "list (curl)")"
        lf="$(median_of "$n" noop "list, filtered (curl)")"
        r="$(ratio "$c" "$t")"
        echo "| $n | no-op: tend ≥ 50× faster than compose | $(fmt_ms "$c") / $(fmt_ms "$t") = ${r}× | $(meets "$r" ">=" 50) |"
        r="$(ratio "$t" "$l")"
        echo "| $n | no-op: tend within 3× of one bare list call | $(fmt_ms "$t") / $(fmt_ms "$l") = ${r}× (filtered list: $(ratio "$t" "$lf")×) | $(meets "$r" "<=" 3) |"
        read -r bname bm <<<"$(best_raw "$n")"
        local ti
        ti="$(median_of "$n" initial tend)"
        r="$(ratio "$ti" "$bm")"
        local same=""
        if m="$(median_of "$n" initial "raw-c$TEND_DEFAULT_PARALLEL")"; then
            same=" (vs concurrency $TEND_DEFAULT_PARALLEL, tend's default: $(ratio "$ti" "$m")×)"
        fi
        echo "| $n | initial: tend ≤ 1.1× best raw API ($(subject_name "$bname")) | $(fmt_ms "$ti") / $(fmt_ms "$bm") = ${r}×$same | $(meets "$r" "<=" 1.1) |"
        local pcsv
        pcsv="$(awk -F'\t' -v n="$n" '$1 == n && $2 == "paired" { print $4 }' "$SAMPLES")"
        if [ -n "$pcsv" ]; then
            read -r med min max _ _ cnt <<<"$(stats "$pcsv")"
            echo "| $n | initial, paired: tend / raw at concurrency $TEND_DEFAULT_PARALLEL, run by run | median $(printf '%.2f' "$med")× (range $(printf '%.2f' "$min")–$(printf '%.2f' "$max")×, $cnt pairs) | $(meets "$med" "<=" 1.1) |"
        fi
        local rss
        for scen in rss-initial rss-noop; do
            rss="$(awk -F'\t' -v n="$n" -v s="$scen" '$1 == n && $2 == s { print $4 }' "$SAMPLES" | tr ',' '\n' | sort -g | tail -n1)"
            [ -n "$rss" ] || continue
            echo "| $n | $(scenario_name "$scen") of tend apply ≤ 30 MB (max of runs) | $(fmt_mb "$rss") | $(meets "$rss" "<=" 30720) |"
        done
    done
    echo
    echo "Samples: \`$SAMPLES\`; hyperfine JSON and logs under \`$WORK\`."
}

report | tee "$WORK/report.md"
log "report: $WORK/report.md"
