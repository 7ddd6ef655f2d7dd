#!/usr/bin/env bash
# The README's first command: from a fresh Debian 12 host to a running demo.
#
# Installs what is missing (Debian packages, Rust, a running Docker engine, the local
# demo image), builds tend, starts `tend agent` on examples/quickstart (two busybox httpd
# services on a `quickstart` network, web waiting for api to be healthy), checks that the
# page at http://127.0.0.1:8080/ answers, then kills the web container to show the agent
# bringing it back. Safe to run again: a running quickstart agent is replaced (its
# services keep running), every other step is idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

SPECS="$ROOT/examples/quickstart"
# The demo runs in its own scope, state directory and socket, so it never touches (or is
# touched by) what a tend on this host manages in the default scope.
export TEND_SCOPE="${TEND_SCOPE:-quickstart}"
export TEND_STATE_DIR="${TEND_STATE_DIR:-/var/lib/tend-quickstart}"
RUN_DIR="${TEND_QUICKSTART_RUN:-/run/tend-quickstart}"
export TEND_SOCKET="$RUN_DIR/tend.sock"
PID_FILE="$RUN_DIR/agent.pid"
LOG_FILE="${TEND_QUICKSTART_LOG:-/var/log/tend-quickstart.log}"
URL="http://127.0.0.1:8080/"

banner "1/6 packages, Rust, Docker, demo image"
mapfile -t PKGS < <(build_pkgs)
need_pkgs "${PKGS[@]}" docker.io busybox-static
ensure_rust
ensure_docker
ensure_demo_image

banner "2/6 build tend (release)"
cargo build --release -p tend
TEND="$ROOT/target/release/tend"

banner "3/6 tend agent --specs $SPECS (in the background)"
mkdir -p "$RUN_DIR"
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    log "stopping the quickstart agent started earlier (pid $(cat "$PID_FILE")); its services keep running"
    kill -TERM "$(cat "$PID_FILE")"
    for _ in $(seq 1 100); do kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break; sleep 0.1; done
fi
setsid "$TEND" agent --specs "$SPECS" --log-format text >>"$LOG_FILE" 2>&1 </dev/null &
echo $! >"$PID_FILE"
log "agent pid $(cat "$PID_FILE"), log $LOG_FILE"

banner "4/6 tend status (from the agent, after its first pass)"
ready=""
for _ in $(seq 1 120); do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        log "ERROR: the agent exited. Its log:"
        tail -n 30 "$LOG_FILE" >&2
        exit 1
    fi
    if "$TEND" status -o json 2>/dev/null | grep -q '"passes": [1-9]'; then
        ready=1
        break
    fi
    sleep 0.5
done
[ -n "$ready" ] || { tail -n 30 "$LOG_FILE" >&2; die "the agent did not finish its first pass within 60 s"; }
# Wait for the services to come up (web waits for api to be healthy).
for _ in $(seq 1 60); do
    "$TEND" status 2>/dev/null | grep -q "Converged" && break
    sleep 1
done
"$TEND" status

banner "5/6 GET $URL"
page=""
for _ in $(seq 1 20); do
    if page="$(curl -fsS --max-time 2 "$URL" 2>/dev/null)"; then
        break
    fi
    page=""
    sleep 1
done
if [ -z "$page" ]; then
    log "ERROR: $URL did not answer within 20 s. What tend created:"
    docker ps -a --filter label=tend.scope >&2 || true
    exit 1
fi
printf '%s\n' "$page"

banner "6/6 drift repair: docker kill quickstart-web-1"
before="$(docker inspect -f '{{.State.StartedAt}}' quickstart-web-1)"
t0=$(date +%s%N)
docker kill quickstart-web-1 >/dev/null
repaired=""
for _ in $(seq 1 200); do
    now="$(docker inspect -f '{{.State.Running}} {{.State.StartedAt}}' quickstart-web-1 2>/dev/null || true)"
    if [ "${now%% *}" = "true" ] && [ "${now#* }" != "$before" ]; then
        repaired=1
        break
    fi
    sleep 0.05
done
[ -n "$repaired" ] || die "the agent did not restart quickstart-web-1 within 10 s (log: $LOG_FILE)"
log "quickstart-web-1 was running again $(( ($(date +%s%N) - t0) / 1000000 )) ms after the kill"

cat <<MSG

==== quickstart is running, kept converged by tend agent (pid $(cat "$PID_FILE")) ====
  page:      $URL
  status:    TEND_SOCKET=$TEND_SOCKET $TEND status
  plan:      TEND_SOCKET=$TEND_SOCKET $TEND plan
  log:       $LOG_FILE
  try:       edit $SPECS/web.yaml (say, its env) and watch \`tend status\`
  see it:    docker ps --filter label=tend.scope=$TEND_SCOPE
  stop it:   kill \$(cat $PID_FILE)      (the services keep running)
  remove it: stop the agent, then
             mkdir -p /tmp/tend-empty && TEND_SCOPE=$TEND_SCOPE TEND_STATE_DIR=$TEND_STATE_DIR $TEND apply /tmp/tend-empty
             (applying an empty spec set removes exactly what tend created in this scope)
MSG
