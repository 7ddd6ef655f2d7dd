# shellcheck shell=bash
# Shared helpers for scripts/test.sh and scripts/quickstart.sh.
#
# Source it from a script running under `set -euo pipefail`:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every helper is idempotent: it does nothing when what it ensures is already there,
# and it fails loudly (message on stderr, non-zero status) when it cannot ensure it.
# Nothing here ever pulls an image from a registry.

# The local demo image every example and integration test runs.
TEND_DEMO_IMAGE="${TEND_DEMO_IMAGE:-tend-demo/busybox:1}"

# Print a message on stderr.
log() { printf '%s\n' "$*" >&2; }

# Print an error on stderr and return non-zero (under `set -e` this ends the script).
die() {
    printf 'ERROR: %s\n' "$*" >&2
    return 1
}

# A stage banner, so a long CI log can be scanned quickly.
banner() {
    printf '\n==== %s ====\n' "$*"
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $* (and sudo is not installed)"
    fi
}

# True when the Debian package PKG is installed.
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

_TEND_APT_UPDATED=""

# need_pkgs PKG...: install, with one `apt-get update` first, only the Debian packages
# that are missing.
need_pkgs() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing missing Debian packages: ${missing[*]}"
    if [ -z "$_TEND_APT_UPDATED" ]; then
        as_root apt-get update -q || die "apt-get update failed"
        _TEND_APT_UPDATED=1
    fi
    # On a host without systemd as PID 1, a package's postinst may fail to start its
    # service; invoke-rc.d reports that and carries on, so the install still succeeds.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
}

# The packages a build of the workspace needs (a C toolchain only if there is none).
build_pkgs() {
    local pkgs=(pkg-config protobuf-compiler ca-certificates curl)
    if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        pkgs+=(build-essential)
    fi
    command -v git >/dev/null 2>&1 || pkgs+=(git)
    printf '%s\n' "${pkgs[@]}"
}

# The minimum Rust version, read from the workspace's `rust-version` (1.89 if absent).
_tend_min_rust() {
    local root v
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    v="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$root/Cargo.toml" 2>/dev/null | head -n1)"
    printf '%s\n' "${v:-1.89}"
}

# True when `rustc` on PATH is at least the minimum version.
_tend_rust_recent() {
    local have want
    have="$(rustc --version 2>/dev/null | awk '{print $2}')" || return 1
    [ -n "$have" ] || return 1
    want="$(_tend_min_rust)"
    [ "$(printf '%s\n%s\n' "$want" "${have%%-*}" | sort -V | head -n1)" = "$want" ]
}

# ensure_rust: a recent cargo (with rustfmt and clippy) on PATH. Prefers ~/.cargo/bin
# (rustup) over Debian's cargo, which is too old; installs rustup when needed.
ensure_rust() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    if [ -x "$cargo_bin/cargo" ]; then
        case ":$PATH:" in
            *":$cargo_bin:"*) ;;
            *) export PATH="$cargo_bin:$PATH" ;;
        esac
    fi
    if ! command -v cargo >/dev/null 2>&1 || ! _tend_rust_recent; then
        log "no Rust >= $(_tend_min_rust) found; installing it with rustup"
        command -v curl >/dev/null 2>&1 || need_pkgs curl ca-certificates
        if ! curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --no-modify-path --profile minimal --component rustfmt,clippy; then
            die "could not install Rust with rustup (is https://sh.rustup.rs reachable?). Install Rust >= $(_tend_min_rust) with rustfmt and clippy by hand, then run this again."
            return 1
        fi
        export PATH="$cargo_bin:$PATH"
        command -v cargo >/dev/null 2>&1 || { die "rustup ran but cargo is still not on PATH"; return 1; }
        _tend_rust_recent || { die "Rust is older than $(_tend_min_rust): $(rustc --version)"; return 1; }
    fi
    # rustfmt and clippy: add them if rustup can, fail clearly if not.
    local comp
    for comp in rustfmt clippy; do
        local sub="fmt"
        [ "$comp" = clippy ] && sub="clippy"
        if ! cargo "$sub" --version >/dev/null 2>&1; then
            if command -v rustup >/dev/null 2>&1; then
                rustup component add "$comp" || { die "could not add the Rust component $comp"; return 1; }
            else
                die "cargo $sub is missing and rustup is not installed"
                return 1
            fi
        fi
    done
    log "rust: $(rustc --version), $(cargo --version)"
}

# ensure_protoc: `protoc` on PATH (Debian's protobuf-compiler), which the build of the etcd
# client (etcd-client, through tonic) runs.
ensure_protoc() {
    command -v protoc >/dev/null 2>&1 || need_pkgs protobuf-compiler || return 1
    command -v protoc >/dev/null 2>&1 || { die "protobuf-compiler is installed but protoc is not on PATH"; return 1; }
    log "protoc: $(protoc --version)"
}

# ensure_etcd: `etcd` and `etcdctl` on PATH (Debian's etcd-server and etcd-client: etcd 3.4,
# v3 API), and openssl for the TLS test's certificates, for the cluster tests, which start their own members on free ports
# (tests/harness/etcd.rs). Installed when missing; fails loudly when they do not run. When
# this call installs etcd-server on a host where systemd is PID 1, the etcd service its
# package enables is stopped and disabled again: nothing here needs a system etcd.
ensure_etcd() {
    local installed=""
    if ! command -v etcd >/dev/null 2>&1; then
        need_pkgs etcd-server || return 1
        installed=1
    fi
    command -v etcdctl >/dev/null 2>&1 || need_pkgs etcd-client || return 1
    # The TLS test makes its certificates with openssl.
    command -v openssl >/dev/null 2>&1 || need_pkgs openssl || return 1
    if [ -n "$installed" ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
        as_root systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
    local v
    v="$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')" ||
        { die "etcd is installed but does not run (etcd --version failed)"; return 1; }
    [ -n "$v" ] || { die "etcd is installed but does not run (etcd --version printed no version)"; return 1; }
    etcdctl version >/dev/null 2>&1 || { die "etcdctl is installed but does not run (etcdctl version failed)"; return 1; }
    case "$v" in
        3.*) ;;
        *) die "etcd $v is not etcd 3 (the v3 API is needed)"; return 1 ;;
    esac
    log "etcd: $v ($(command -v etcd))"
}

# ensure_netns: network namespaces, veth pairs and bridges can be made here (the cluster
# tests' partitions, tests/harness/netns.rs). Needs root and iproute2; fails loudly with the
# step that failed (a container without CAP_SYS_ADMIN/CAP_NET_ADMIN cannot). Creates and
# deletes one namespace of its own; touches nothing else.
ensure_netns() {
    command -v ip >/dev/null 2>&1 || need_pkgs iproute2 || return 1
    local ns="tend-probe-$$" err
    if ! err="$(as_root ip netns add "$ns" 2>&1)"; then
        die "cannot create a network namespace (ip netns add: $err); the cluster tests need root with CAP_SYS_ADMIN and CAP_NET_ADMIN"
        return 1
    fi
    if ! err="$(as_root ip -n "$ns" link add br0 type bridge 2>&1 &&
        as_root ip -n "$ns" link add va type veth peer name vb 2>&1)"; then
        as_root ip netns del "$ns" >/dev/null 2>&1 || true
        die "network namespaces work, but a bridge or veth pair cannot be made in one: $err"
        return 1
    fi
    as_root ip netns del "$ns" || { die "cannot delete the probe namespace $ns"; return 1; }
    log "netns: namespaces, bridges and veth pairs work"
}

# Where the dockerd we start logs: /var/log when writable, $TMPDIR otherwise.
_tend_dockerd_log() {
    if [ -w /var/log ]; then
        printf '%s\n' /var/log/tend-dockerd.log
    else
        printf '%s\n' "${TMPDIR:-/tmp}/tend-dockerd.log"
    fi
}

# ensure_docker: a Docker engine that answers `docker info`. Installs docker.io if
# missing, and starts `dockerd` in the background when none answers (systemd may not be
# PID 1, so no `systemctl start docker`). Never skips: fails with the daemon's log.
# Extra daemon flags can be given in TEND_DOCKERD_ARGS (e.g. "--storage-driver=vfs"),
# and its pid file in TEND_DOCKERD_PIDFILE when those flags move it.
ensure_docker() {
    need_pkgs docker.io
    if docker info >/dev/null 2>&1; then
        log "docker: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) is running"
        return 0
    fi
    local logf pidf="${TEND_DOCKERD_PIDFILE:-/var/run/docker.pid}" started=""
    logf="$(_tend_dockerd_log)"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf" 2>/dev/null)" 2>/dev/null; then
        log "docker: dockerd (pid $(cat "$pidf")) is running but not answering yet; waiting"
    else
        if [ -f "$pidf" ]; then
            log "docker: removing stale $pidf"
            as_root rm -f "$pidf"
        fi
        log "docker: starting dockerd in the background (log: $logf)"
        local dockerd_bin
        dockerd_bin="$(command -v dockerd || echo /usr/sbin/dockerd)"
        # shellcheck disable=SC2086 # TEND_DOCKERD_ARGS is a list of flags
        as_root setsid -w "$dockerd_bin" ${TEND_DOCKERD_ARGS:-} </dev/null >>"$logf" 2>&1 &
        started=$!
        disown 2>/dev/null || true
    fi
    local waited=0 why=""
    until docker info >/dev/null 2>&1; do
        if [ -n "$started" ] && ! kill -0 "$started" 2>/dev/null; then
            why="dockerd exited"
        elif [ "$waited" -ge 60 ]; then
            why="no answer after 60s"
        fi
        if [ -n "$why" ]; then
            log "docker: $why; last 30 lines of $logf:"
            log "----"
            tail -n 30 "$logf" >&2 2>/dev/null || log "(no log at $logf)"
            log "----"
            die "dockerd could not start"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "docker: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) answered after ${waited}s"
}

# ensure_demo_image: the local image $TEND_DEMO_IMAGE (tend-demo/busybox:1), built with
# `docker import` from Debian's busybox-static when missing. Prints the image ID.
ensure_demo_image() {
    local image="$TEND_DEMO_IMAGE"
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        need_pkgs busybox-static
        local bb=/bin/busybox
        [ -x "$bb" ] || { die "$bb is missing although busybox-static is installed"; return 1; }
        log "building $image from $bb (no pull)"
        local root
        root="$(mktemp -d "${TMPDIR:-/tmp}/tend-rootfs.XXXXXX")"
        mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,www,var/run,proc,sys,dev}
        chmod 1777 "$root/tmp"
        chmod 700 "$root/root"
        cp "$bb" "$root/bin/busybox"
        chmod 755 "$root/bin/busybox"
        local applet
        # Every applet (this covers sh, sleep, wget, httpd, echo, cat, ls, true, false,
        # nc, mkdir, env, id, kill), all as symlinks to /bin/busybox.
        for applet in $("$bb" --list) sh sleep wget httpd echo cat ls true false nc mkdir env id kill; do
            case "$applet" in busybox | */*) continue ;; esac
            [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
        done
        ln -sf ../../bin/env "$root/usr/bin/env"
        cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
        cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
        printf 'tend-demo busybox image\n' >"$root/www/index.html"
        if ! tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
            docker import \
                -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                -c 'CMD ["sh"]' \
                -m "tend demo image: Debian busybox-static" \
                - "$image" >/dev/null; then
            rm -rf "$root"
            die "docker import of $image failed"
            return 1
        fi
        rm -rf "$root"
        docker run --rm --network none "$image" sh -c 'true' ||
            { die "the new image $image does not run"; return 1; }
    fi
    docker image inspect --format '{{.Id}}' "$image"
}
