#!/usr/bin/env bash
# THE test command (README's second command; .ci/run runs exactly this).
#
# Installs what is missing (Debian packages, Rust, protoc, etcd, a running Docker engine, the local
# demo image), then runs, in order and with output streamed:
#   cargo fmt --check, cargo clippy -D warnings, cargo build, cargo test
# Every stage runs even if an earlier one failed (except `test` after a failed build), so
# one run shows every problem; the exit code is non-zero if any stage failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

START=$SECONDS

banner "setup: packages, Rust, protoc, etcd, namespaces, Docker, demo image"
mapfile -t PKGS < <(build_pkgs)
need_pkgs "${PKGS[@]}" docker.io busybox-static docker-registry systemd tzdata git curl util-linux postgresql rsync \
    openssh-server openssh-client
ensure_rust
ensure_protoc
# The cluster tests (tests/cluster/) start a 3-member etcd of their own and put members and
# clients in network namespaces.
ensure_etcd
ensure_netns
ensure_docker
ensure_demo_image
# The systemd node image (debootstrap bookworm + systemd), built once and reused: the
# tests under tests/systemd/ boot it to test units against a real systemd.
# shellcheck source=scripts/systemd-node.sh
source "$ROOT/scripts/systemd-node.sh"
ensure_systemd_node_image

# Integration tests run this image (built locally above; nothing is ever pulled).
export TEND_TEST_IMAGE="$TEND_DEMO_IMAGE"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

FAILED=()
SUMMARY=()

# stage NAME CMD...: run one stage with a banner, record its result and duration.
stage() {
    local name="$1" t0=$SECONDS rc=0
    shift
    banner "$name: $*"
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("ok      $name ($((SECONDS - t0))s)")
    else
        SUMMARY+=("FAILED  $name (exit $rc, $((SECONDS - t0))s)")
        FAILED+=("$name")
    fi
    return 0
}

stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --workspace --all-targets -- -D warnings
stage build cargo build --workspace
if [[ " ${FAILED[*]} " == *" build "* ]]; then
    SUMMARY+=("SKIPPED test (the build failed)")
    FAILED+=("test")
else
    stage test cargo test --workspace
fi

banner "summary ($((SECONDS - START))s)"
printf '%s\n' "${SUMMARY[@]}"
if [ "${#FAILED[@]}" -ne 0 ]; then
    printf 'FAILED stages: %s\n' "${FAILED[*]}"
    exit 1
fi
echo "all stages passed"
