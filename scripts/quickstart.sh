#!/usr/bin/env bash
# The README's first command: from a fresh Debian 12 host to a running demo.
#
# Installs what is missing (Debian packages, Rust, a running Docker engine, the local
# demo image), builds tend, applies examples/quickstart (two busybox httpd services on a
# `quickstart` network, web waiting for api to be healthy) and checks that the page at
# http://127.0.0.1:8080/ answers. Safe to run again: every step is idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

SPECS="examples/quickstart"
# The demo runs in its own scope and state directory, so it never touches (or is touched
# by) what a tend on this host manages in the default scope.
export TEND_SCOPE="${TEND_SCOPE:-quickstart}"
export TEND_STATE_DIR="${TEND_STATE_DIR:-/var/lib/tend-quickstart}"
URL="http://127.0.0.1:8080/"

banner "1/5 packages, Rust, Docker, demo image"
mapfile -t PKGS < <(build_pkgs)
need_pkgs "${PKGS[@]}" docker.io busybox-static
ensure_rust
ensure_docker
ensure_demo_image

banner "2/5 build tend (release)"
cargo build --release -p tend
TEND="$ROOT/target/release/tend"

banner "3/5 tend apply $SPECS"
"$TEND" apply "$SPECS"

banner "4/5 tend status $SPECS"
"$TEND" status "$SPECS"

banner "5/5 GET $URL"
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

cat <<MSG

==== quickstart is running ====
  page:      $URL
  status:    TEND_SCOPE=$TEND_SCOPE TEND_STATE_DIR=$TEND_STATE_DIR $TEND status $SPECS
  plan:      TEND_SCOPE=$TEND_SCOPE TEND_STATE_DIR=$TEND_STATE_DIR $TEND plan $SPECS
  see it:    docker ps --filter label=tend.scope=$TEND_SCOPE
  remove it: mkdir -p /tmp/tend-empty && TEND_SCOPE=$TEND_SCOPE TEND_STATE_DIR=$TEND_STATE_DIR $TEND apply /tmp/tend-empty
             (applying an empty spec set removes exactly what tend created in this scope)
MSG
