#!/usr/bin/env bash
# shellcheck shell=bash
# systemd "nodes" for tests: Docker containers that boot a real systemd (Debian bookworm)
# as their PID 1, with a real system D-Bus, journald, timers and watchdogs.
#
# Source it (it sources scripts/lib.sh) from a script running under `set -euo pipefail`:
#
#     source "$ROOT/scripts/systemd-node.sh"
#     ensure_systemd_node_image          # builds tend-test/systemd-node:bookworm once
#     start_systemd_node my-node         # runs it, waits for `running` (or `degraded`)
#     docker exec my-node systemctl status
#     stop_systemd_node my-node          # removes it
#
# or run it:
#
#     bash scripts/systemd-node.sh build          # ensure_systemd_node_image
#     bash scripts/systemd-node.sh start NAME     # start_systemd_node NAME
#     bash scripts/systemd-node.sh shell NAME     # an interactive shell in NAME
#     bash scripts/systemd-node.sh stop NAME      # stop_systemd_node NAME
#     bash scripts/systemd-node.sh list           # the nodes that exist
#     bash scripts/systemd-node.sh mirror         # the Debian mirror the build would use
#     bash scripts/systemd-node.sh smoke          # prove units, D-Bus, notify, watchdog,
#                                                 # timers, Persistent= catch-up, docker cp
#
# The recipe and the reason for every `docker run` flag are in docs/DEVELOPERS.md.
# Nothing here pulls an image from a registry: the image is made with debootstrap from
# the Debian mirror this machine's apt already uses, then `docker import`ed.

# The image every systemd node runs.
TEND_SYSTEMD_NODE_IMAGE="${TEND_SYSTEMD_NODE_IMAGE:-tend-test/systemd-node:bookworm}"
# Where the debootstrapped rootfs is cached between builds.
TEND_SYSTEMD_NODE_CACHE="${TEND_SYSTEMD_NODE_CACHE:-/var/cache/tend}"
# The label every node carries (so `docker ps --filter label=tend.test=systemd-node`).
TEND_SYSTEMD_NODE_LABEL="tend.test=systemd-node"
# How long start_systemd_node waits for systemd to finish booting.
TEND_SYSTEMD_NODE_BOOT_TIMEOUT="${TEND_SYSTEMD_NODE_BOOT_TIMEOUT:-60}"

_TEND_NODE_SUITE="bookworm"
_TEND_NODE_PKGS="systemd,systemd-sysv,dbus,iproute2,procps"

# The `docker run` flags of a node (docs/DEVELOPERS.md says why each one is there).
# tests/harness/systemd.rs repeats them: change both together.
# shellcheck disable=SC2054 # the commas are inside --tmpfs options
_TEND_NODE_RUN_FLAGS=(
    --cap-add SYS_ADMIN
    --security-opt seccomp=unconfined
    --cgroupns=host
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw
    --tmpfs /run:rw,nosuid,nodev,exec,mode=755
    --tmpfs /run/lock:rw,nosuid,nodev,noexec,mode=1777,size=5m
    --stop-signal SIGRTMIN+3
    -e container=docker
)

if ! declare -F need_pkgs >/dev/null 2>&1 || ! declare -F ensure_docker >/dev/null 2>&1; then
    # shellcheck source=scripts/lib.sh
    source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
fi

# The Debian mirror (URI) that this machine's apt uses for the suite $_TEND_NODE_SUITE's
# `main` component, read at run time from /etc/apt/sources.list, sources.list.d/*.list
# (one-line format) and sources.list.d/*.sources (deb822). TEND_DEBIAN_MIRROR overrides it.
tend_debian_mirror() {
    if [ -n "${TEND_DEBIAN_MIRROR:-}" ]; then
        printf '%s\n' "${TEND_DEBIAN_MIRROR%/}"
        return 0
    fi
    local suite="$_TEND_NODE_SUITE" f uri="" files=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && files+=("$f")
    done
    if [ "${#files[@]}" -gt 0 ]; then
        # deb [options] URI SUITE COMPONENT...
        uri="$(sed -e 's/#.*//' -e 's/\[[^]]*\]//g' "${files[@]}" 2>/dev/null |
            awk -v suite="$suite" '
                $1 == "deb" && $3 == suite {
                    for (i = 4; i <= NF; i++) if ($i == "main") { print $2; exit }
                }')"
    fi
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            uri="$(awk -v suite="$suite" '
                BEGIN { RS = ""; FS = "\n" }
                {
                    types = ""; uris = ""; suites = ""; comps = ""; enabled = "yes"
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (line ~ /^[ \t]*#/ || line ~ /^[ \t]/) continue
                        key = tolower(line); sub(/:.*/, "", key)
                        val = line; sub(/^[^:]*:[ \t]*/, "", val)
                        if (key == "types") types = val
                        else if (key == "uris") uris = val
                        else if (key == "suites") suites = val
                        else if (key == "components") comps = val
                        else if (key == "enabled") enabled = tolower(val)
                    }
                    if (enabled == "no") next
                    if ((" " types " ") !~ / deb /) next
                    if ((" " suites " ") !~ (" " suite " ")) next
                    if ((" " comps " ") !~ / main /) next
                    split(uris, u, /[ \t]+/)
                    for (j in u) if (u[j] != "") { print u[j]; exit }
                }' "$f")"
            [ -n "$uri" ] && break
        done
    fi
    case "$uri" in
        http://* | https://* | file:/*) ;;
        "")
            die "no apt source for Debian '$suite' main found in /etc/apt/sources.list{,.d/} (set TEND_DEBIAN_MIRROR to a Debian mirror URL)"
            return 1
            ;;
        *)
            die "the apt source for '$suite' ($uri) is not an http(s):// or file:/ URL that debootstrap can use (set TEND_DEBIAN_MIRROR)"
            return 1
            ;;
    esac
    printf '%s\n' "${uri%/}"
}

# The recipe's fingerprint: changes whenever the suite, the package list or the way the
# rootfs is customised or imported changes, so an image made by an older recipe is rebuilt.
_tend_node_recipe() {
    {
        printf '%s\n%s\n' "$_TEND_NODE_SUITE" "$_TEND_NODE_PKGS"
        declare -f _tend_node_customize _tend_node_build
    } | sha256sum | cut -c1-16
}

# _tend_node_customize ROOTFS: turn a debootstrapped rootfs into a node's rootfs.
_tend_node_customize() {
    local root="$1" u
    [ -x "$root/lib/systemd/systemd" ] || { die "$root has no /lib/systemd/systemd"; return 1; }

    # One machine-id per container: an empty /etc/machine-id makes systemd generate a
    # random one at first boot and write it (/etc is writable), so it stays the same
    # across `docker stop`/`docker start` and differs between nodes. D-Bus reads the same.
    : >"$root/etc/machine-id" || return 1
    rm -f "$root/var/lib/dbus/machine-id" || return 1
    ln -s /etc/machine-id "$root/var/lib/dbus/machine-id" || return 1

    # Boot to multi-user.target (no graphical target in a node).
    ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target" || return 1

    # Mask what has no use in a container, slows boot, or would run apt behind a test's
    # back: gettys (no consoles), udev and kernel-module/sysctl/fs units (the host owns the
    # kernel and devices), network/resolve/time daemons (Docker owns the network and the
    # clock), and Debian's periodic jobs (apt-daily would download packages; their timers
    # are Persistent=true, so they would also fire at every `docker start`).
    rm -f "$root"/etc/systemd/system/getty.target.wants/getty@tty1.service \
        "$root"/etc/systemd/system/timers.target.wants/{apt-daily,apt-daily-upgrade,dpkg-db-backup,e2scrub_all,fstrim}.timer \
        "$root"/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service || return 1
    for u in \
        getty@.service serial-getty@.service console-getty.service container-getty@.service \
        getty-static.service \
        systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
        systemd-udev-trigger.service systemd-udev-settle.service \
        systemd-modules-load.service systemd-sysctl.service systemd-binfmt.service \
        systemd-hwdb-update.service systemd-firstboot.service systemd-pstore.service \
        sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
        systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service \
        systemd-resolved.service systemd-timesyncd.service \
        apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service \
        dpkg-db-backup.timer dpkg-db-backup.service e2scrub_all.timer e2scrub_all.service \
        e2scrub_reap.service fstrim.timer fstrim.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$u" || return 1
    done

    # Persistent journal (so `journalctl -b -1` shows the boot before a `docker start`),
    # kept small; no core files from services a test kills with SIGABRT (watchdog).
    mkdir -p "$root/var/log/journal" "$root/etc/systemd/journald.conf.d" \
        "$root/etc/systemd/system.conf.d" || return 1
    printf '[Journal]\nStorage=persistent\nSystemMaxUse=32M\nRuntimeMaxUse=16M\n' \
        >"$root/etc/systemd/journald.conf.d/tend-node.conf" || return 1
    printf '[Manager]\nDefaultLimitCORE=0\n' \
        >"$root/etc/systemd/system.conf.d/tend-node.conf" || return 1

    # Smaller image: downloaded .debs and package lists (`apt-get update` brings them back).
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/* || return 1
    mkdir -p "$root/var/lib/apt/lists/partial" || return 1

    # Docker mounts its own /etc/hostname, /etc/hosts and /etc/resolv.conf over these.
    printf 'systemd-node\n' >"$root/etc/hostname" || return 1
    printf 'tend systemd node (%s), recipe %s\n' "$_TEND_NODE_SUITE" \
        "$(date -u +%Y-%m-%d)" >"$root/etc/tend-node-release" || return 1
}

# True when the image exists and was made by the current recipe.
_tend_node_image_current() {
    local have
    have="$(docker image inspect --format '{{ index .Config.Labels "tend.recipe" }}' \
        "$TEND_SYSTEMD_NODE_IMAGE" 2>/dev/null)" || return 1
    [ "$have" = "$(_tend_node_recipe)" ]
}

# The build, in a subshell (own traps and options). Every step checks its own status:
# the caller runs it as `_tend_node_build || ...`, where `set -e` does not apply.
_tend_node_build() (
    set -uo pipefail
    fail() {
        printf 'ERROR: systemd node image: %s\n' "$*" >&2
        exit 1
    }
    t0=$SECONDS
    cache="$TEND_SYSTEMD_NODE_CACHE"
    raw="$cache/systemd-node-rootfs"
    [ "$(id -u)" -eq 0 ] || fail "building needs root (debootstrap, $cache)"
    want="suite=$_TEND_NODE_SUITE variant=minbase include=$_TEND_NODE_PKGS arch=$(dpkg --print-architecture)"
    stage=""
    trap '[ -n "$stage" ] && rm -rf "$stage"' EXIT

    mkdir -p "$cache" || fail "cannot create $cache"
    # One build at a time on this machine (tests may start in parallel).
    exec 9>"$cache/systemd-node.lock" || fail "cannot open $cache/systemd-node.lock"
    flock -w 900 9 || fail "another build holds $cache/systemd-node.lock for more than 15 min"
    if [ "${TEND_SYSTEMD_NODE_REBUILD:-}" != 1 ] && _tend_node_image_current; then
        log "systemd node: $TEND_SYSTEMD_NODE_IMAGE was built meanwhile"
        exit 0
    fi

    # 1. The debootstrapped rootfs, reused when a finished one for the same recipe exists.
    if [ -f "$raw.done" ] && [ "$(cat "$raw.done")" = "$want" ] && [ -x "$raw/lib/systemd/systemd" ]; then
        log "systemd node: reusing the rootfs in $raw"
    else
        mirror="$(tend_debian_mirror)" || fail "no Debian mirror (see above)"
        rm -rf "$raw" "$raw.done" "$raw.partial" || fail "cannot clear $raw"
        log "systemd node: debootstrap $_TEND_NODE_SUITE from $mirror into $raw (2-3 min)"
        t1=$SECONDS
        if ! debootstrap --variant=minbase --include="$_TEND_NODE_PKGS" \
            "$_TEND_NODE_SUITE" "$raw.partial" "$mirror" >"$cache/debootstrap.log" 2>&1; then
            log "---- last 40 lines of $cache/debootstrap.log"
            tail -n 40 "$cache/debootstrap.log" >&2
            [ -f "$raw.partial/debootstrap/debootstrap.log" ] && {
                log "---- last 20 lines of $raw.partial/debootstrap/debootstrap.log"
                tail -n 20 "$raw.partial/debootstrap/debootstrap.log" >&2
            }
            rm -rf "$raw.partial"
            fail "debootstrap failed (full log: $cache/debootstrap.log)"
        fi
        [ -x "$raw.partial/lib/systemd/systemd" ] || fail "debootstrap finished without systemd in the rootfs"
        mv "$raw.partial" "$raw" || fail "cannot move the rootfs into place"
        printf '%s\n' "$want" >"$raw.done" || fail "cannot write $raw.done"
        log "systemd node: debootstrap took $((SECONDS - t1))s"
    fi

    # 2. A customised copy of it, imported as the image.
    stage="$(mktemp -d "$cache/systemd-node-stage.XXXXXX")" || fail "mktemp failed"
    cp -a "$raw/." "$stage/" || fail "cannot copy $raw to $stage"
    _tend_node_customize "$stage" || fail "customising the rootfs failed"
    recipe="$(_tend_node_recipe)"
    old_id="$(docker image inspect --format '{{.Id}}' "$TEND_SYSTEMD_NODE_IMAGE" 2>/dev/null)" || old_id=""
    log "systemd node: docker import as $TEND_SYSTEMD_NODE_IMAGE (recipe $recipe)"
    tar --numeric-owner -C "$stage" -c . |
        docker import \
            -c 'CMD ["/sbin/init"]' \
            -c 'ENV container=docker' \
            -c "LABEL tend.recipe=$recipe" \
            -c "LABEL tend.test=systemd-node-image" \
            -m "tend systemd node: debootstrap $_TEND_NODE_SUITE minbase + $_TEND_NODE_PKGS" \
            - "$TEND_SYSTEMD_NODE_IMAGE" >/dev/null
    st=("${PIPESTATUS[@]}")
    [ "${st[0]}" -eq 0 ] || fail "tar of $stage failed"
    [ "${st[1]}" -eq 0 ] || fail "docker import failed"

    # 3. A fresh node of it must boot to `running`; otherwise the image is removed.
    probe="tend-node-probe-$$"
    if ! start_systemd_node "$probe" >&2; then
        docker rm -f -v "$probe" >/dev/null 2>&1
        docker rmi "$TEND_SYSTEMD_NODE_IMAGE" >/dev/null 2>&1
        fail "a node of the new image did not boot (the image was removed)"
    fi
    state="$(docker exec "$probe" systemctl is-system-running 2>/dev/null)"
    docker rm -f -v "$probe" >/dev/null 2>&1
    if [ "$state" != running ]; then
        docker rmi "$TEND_SYSTEMD_NODE_IMAGE" >/dev/null 2>&1
        fail "a fresh node of the new image is '$state', not 'running' (the image was removed)"
    fi
    # The image this one replaces, unless a container still uses it.
    if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$TEND_SYSTEMD_NODE_IMAGE")" ]; then
        docker rmi "$old_id" >/dev/null 2>&1 || log "systemd node: the previous image $old_id is still in use; kept"
    fi
    log "systemd node: built $TEND_SYSTEMD_NODE_IMAGE in $((SECONDS - t0))s ($(docker image inspect --format '{{.Size}}' "$TEND_SYSTEMD_NODE_IMAGE" | awk '{printf "%d MB", $1/1000000}'))"
)

# ensure_systemd_node_image: the image $TEND_SYSTEMD_NODE_IMAGE, built when missing or made
# by an older recipe (TEND_SYSTEMD_NODE_REBUILD=1 forces a rebuild; the debootstrapped
# rootfs in $TEND_SYSTEMD_NODE_CACHE is reused). Fails loudly, never half-builds.
ensure_systemd_node_image() {
    ensure_docker || return 1
    if [ "${TEND_SYSTEMD_NODE_REBUILD:-}" != 1 ] && _tend_node_image_current; then
        return 0
    fi
    if docker image inspect "$TEND_SYSTEMD_NODE_IMAGE" >/dev/null 2>&1; then
        log "systemd node: $TEND_SYSTEMD_NODE_IMAGE is from another recipe; rebuilding it"
    else
        log "systemd node: building $TEND_SYSTEMD_NODE_IMAGE"
    fi
    need_pkgs debootstrap debian-archive-keyring util-linux tar || return 1
    _tend_node_build || {
        die "could not build the systemd node image $TEND_SYSTEMD_NODE_IMAGE"
        return 1
    }
}

# wait_systemd_node NAME [SECONDS]: wait until systemd in the node NAME has booted
# (`systemctl is-system-running` says running or degraded). Prints the failed units when
# degraded; on timeout (or when the container stops) prints the journal and fails.
wait_systemd_node() {
    local name="${1:?usage: wait_systemd_node NAME [SECONDS]}" limit="${2:-$TEND_SYSTEMD_NODE_BOOT_TIMEOUT}"
    local t0=$SECONDS state="" status
    while :; do
        status="$(docker inspect --format '{{.State.Status}}' "$name" 2>/dev/null)" || status=missing
        if [ "$status" != running ]; then
            log "systemd node $name: the container is $status; its output:"
            docker logs --tail 40 "$name" >&2 2>&1 || true
            die "systemd node $name did not boot (container $status)"
            return 1
        fi
        state="$(docker exec "$name" systemctl is-system-running 2>/dev/null)" || true
        case "$state" in
            running)
                log "systemd node $name: running after $((SECONDS - t0))s"
                return 0
                ;;
            degraded)
                log "systemd node $name: degraded after $((SECONDS - t0))s; failed units:"
                docker exec "$name" systemctl --failed --no-pager --no-legend >&2 || true
                return 0
                ;;
        esac
        if [ $((SECONDS - t0)) -ge "$limit" ]; then
            log "systemd node $name: still '${state:-no answer}' after ${limit}s; journal:"
            docker exec "$name" journalctl -b --no-pager -n 60 >&2 2>&1 || true
            docker exec "$name" systemctl list-jobs --no-pager >&2 2>&1 || true
            die "systemd node $name did not reach running/degraded within ${limit}s"
            return 1
        fi
        sleep 0.3
    done
}

# start_systemd_node NAME [EXTRA DOCKER RUN ARGS...]: run a node container named NAME
# (hostname NAME, label tend.test=systemd-node) and wait until systemd has booted.
start_systemd_node() {
    local name="${1:?usage: start_systemd_node NAME [docker run args...]}"
    shift
    docker run -d --name "$name" --hostname "$name" --label "$TEND_SYSTEMD_NODE_LABEL" \
        "${_TEND_NODE_RUN_FLAGS[@]}" "$@" "$TEND_SYSTEMD_NODE_IMAGE" >/dev/null || {
        die "docker run of systemd node $name failed"
        return 1
    }
    wait_systemd_node "$name"
}

# stop_systemd_node NAME: remove the node NAME (and its anonymous volumes); no error when
# it does not exist.
stop_systemd_node() {
    local name="${1:?usage: stop_systemd_node NAME}"
    docker rm -f -v "$name" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------
# smoke: proves, in one fresh node, what tend relies on. Prints one line per check and
# "N passed, N failed"; exits non-zero when a check failed. TEND_TEST_KEEP=1 keeps the node.

_SMOKE_NODE=""
_SMOKE_PASS=0
_SMOKE_FAIL=0
_SMOKE_FAILED=()

# nx CMD...: run CMD in the smoke node (stdin passed through).
_nx() { docker exec -i "$_SMOKE_NODE" "$@"; }
# nsh SCRIPT: run a bash script in the smoke node.
_nsh() { docker exec -i "$_SMOKE_NODE" bash -c "$1"; }
# put PATH: write stdin to PATH in the node.
_put() { docker exec -i "$_SMOKE_NODE" sh -c 'cat > "$1"' put "$1"; }
_check() {
    # _check "what" CONDITION-COMMAND...
    local what="$1"
    shift
    if "$@"; then
        log "    ok: $what"
    else
        log "    FAILED: $what"
        return 1
    fi
}

_smoke_run() {
    local name="$1" t0=$SECONDS rc=0
    banner "smoke: $name"
    # Each check runs in a subshell with errexit, so its first failing command ends it.
    # (Not as `( ... ) || rc=$?`: errexit is ignored inside the left side of `||`.)
    local had_e=""
    case "$-" in *e*) had_e=1 ;; esac
    set +e
    (
        set -eo pipefail
        "_smoke_$name"
    )
    rc=$?
    [ -n "$had_e" ] && set -e
    if [ "$rc" -eq 0 ]; then
        _SMOKE_PASS=$((_SMOKE_PASS + 1))
        log "PASS $name ($((SECONDS - t0))s)"
    else
        _SMOKE_FAIL=$((_SMOKE_FAIL + 1))
        _SMOKE_FAILED+=("$name")
        log "FAIL $name ($((SECONDS - t0))s)"
    fi
}

_smoke_unit_lifecycle() {
    _put /etc/systemd/system/tend-smoke-hello.service <<'EOF'
[Unit]
Description=tend smoke: a simple service

[Service]
ExecStart=/bin/sh -c 'echo hello from tend-smoke-hello; exec sleep infinity'

[Install]
WantedBy=multi-user.target
EOF
    _nx systemctl daemon-reload
    _nx systemctl enable tend-smoke-hello.service
    _check "enabled (wants symlink made)" _nx test -L /etc/systemd/system/multi-user.target.wants/tend-smoke-hello.service
    _check "is-enabled = enabled" test "$(_nx systemctl is-enabled tend-smoke-hello.service)" = enabled
    _nx systemctl start tend-smoke-hello.service
    _check "is-active = active" test "$(_nx systemctl is-active tend-smoke-hello.service)" = active
    _nx systemctl status --no-pager tend-smoke-hello.service | head -n 5 >&2
    _check "its output is in the journal" _nsh 'journalctl -u tend-smoke-hello --no-pager | grep -q "hello from tend-smoke-hello"'
    _nx systemctl stop tend-smoke-hello.service
    _check "stopped: is-active = inactive" test "$(_nx systemctl is-active tend-smoke-hello.service || true)" = inactive
    _nx systemctl disable tend-smoke-hello.service
    _check "is-enabled = disabled" test "$(_nx systemctl is-enabled tend-smoke-hello.service || true)" = disabled
}

_smoke_dbus() {
    _check "system bus socket /run/dbus/system_bus_socket" _nx test -S /run/dbus/system_bus_socket
    local out
    out="$(_nx busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
        org.freedesktop.systemd1.Manager ListUnits)"
    printf '    ListUnits: %.160s...\n' "$out" >&2
    _check "Manager.ListUnits answers with units" grep -q '^a(ssssssouso) [1-9]' <<<"$out"
    _check "ListUnits lists dbus.service" grep -q '"dbus.service"' <<<"$out"
    _check "busctl tree shows unit objects" _nsh 'busctl tree --list org.freedesktop.systemd1 | grep -q "^/org/freedesktop/systemd1/unit/dbus_2eservice$"'
    out="$(_nx busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
        org.freedesktop.systemd1.Manager Version)"
    log "    Manager.Version: $out"
    _check "explicit address unix:path=/run/dbus/system_bus_socket works" _nsh \
        'busctl --address=unix:path=/run/dbus/system_bus_socket call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager GetUnit s dbus.service | grep -q "^o "'
    _check "the bus is dbus-daemon (org.freedesktop.DBus answers)" _nsh \
        'busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId | grep -q "^s "'
}

_smoke_notify() {
    _put /usr/local/bin/tend-smoke-notify <<'EOF'
#!/bin/bash
sleep 1
systemd-notify --ready --status="ready from a shell script"
exec sleep infinity
EOF
    _nx chmod 755 /usr/local/bin/tend-smoke-notify
    _put /etc/systemd/system/tend-smoke-notify.service <<'EOF'
[Unit]
Description=tend smoke: Type=notify from a shell script

[Service]
Type=notify
NotifyAccess=all
ExecStart=/usr/local/bin/tend-smoke-notify
TimeoutStartSec=20s
EOF
    _nx systemctl daemon-reload
    local t0=$SECONDS
    _check "systemctl start returns (READY=1 received)" _nx systemctl start tend-smoke-notify.service
    log "    start took $((SECONDS - t0))s (the script sleeps 1s before notifying)"
    _check "active/running" test "$(_nx systemctl show -P ActiveState tend-smoke-notify.service)/$(_nx systemctl show -P SubState tend-smoke-notify.service)" = active/running
    _check "STATUS= text arrived" test "$(_nx systemctl show -P StatusText tend-smoke-notify.service)" = "ready from a shell script"
    _nx systemctl stop tend-smoke-notify.service
}

_smoke_watchdog() {
    # First run: ready, 3 s of pings every 0.5 s, then silence. Later runs ping forever.
    _put /usr/local/bin/tend-smoke-watchdog <<'EOF'
#!/bin/bash
mkdir -p /var/lib/tend-smoke
echo "$(date +%s.%N) start" >> /var/lib/tend-smoke/watchdog.runs
runs=$(wc -l < /var/lib/tend-smoke/watchdog.runs)
systemd-notify --ready
if [ "$runs" -eq 1 ]; then
    for _ in 1 2 3 4 5 6; do systemd-notify WATCHDOG=1; sleep 0.5; done
    echo "tend-smoke-watchdog: stopping the pings"
    exec sleep infinity
fi
while :; do systemd-notify WATCHDOG=1; sleep 0.5; done
EOF
    _nx chmod 755 /usr/local/bin/tend-smoke-watchdog
    _put /etc/systemd/system/tend-smoke-watchdog.service <<'EOF'
[Unit]
Description=tend smoke: WatchdogSec=2s, Restart=on-failure

[Service]
Type=notify
NotifyAccess=all
WatchdogSec=2s
Restart=on-failure
RestartSec=1s
TimeoutStartSec=20s
ExecStart=/usr/local/bin/tend-smoke-watchdog
EOF
    _nx rm -f /var/lib/tend-smoke/watchdog.runs
    _nx systemctl daemon-reload
    _nx systemctl start tend-smoke-watchdog.service
    local i n=0
    for i in $(seq 1 30); do
        n="$(_nx systemctl show -P NRestarts tend-smoke-watchdog.service)"
        [ "${n:-0}" -ge 1 ] && break
        sleep 0.5
    done
    log "    NRestarts=$n after ~$((i / 2))s"
    _check "restarted by systemd (NRestarts >= 1)" test "${n:-0}" -ge 1
    _check "the journal says why: watchdog timeout" _nsh \
        'journalctl -u tend-smoke-watchdog --no-pager | grep -q "Watchdog timeout"'
    _nsh 'journalctl -u tend-smoke-watchdog --no-pager -o short-precise | grep -E "Watchdog|Killing|result|Scheduled restart|stopping the pings|Started" | head -n 8' >&2 || true
    # The second run pings: it must stay up for longer than two watchdog periods.
    sleep 5
    _check "the restarted run (which pings) is still active after 5s" \
        test "$(_nx systemctl is-active tend-smoke-watchdog.service)" = active
    _check "no second restart meanwhile" test "$(_nx systemctl show -P NRestarts tend-smoke-watchdog.service)" = "$n"
    _nx systemctl stop tend-smoke-watchdog.service
}

_smoke_timer() {
    _put /etc/systemd/system/tend-smoke-tick.service <<'EOF'
[Unit]
Description=tend smoke: the oneshot a timer starts

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /var/lib/tend-smoke; date +%%s >> /var/lib/tend-smoke/tick.runs'
EOF
    local when
    when="$(_nx date -d '+6 sec' '+%Y-%m-%d %H:%M:%S')"
    _put /etc/systemd/system/tend-smoke-tick.timer <<EOF
[Unit]
Description=tend smoke: fires once at $when

[Timer]
OnCalendar=$when
AccuracySec=1s

[Install]
WantedBy=timers.target
EOF
    _nx rm -f /var/lib/tend-smoke/tick.runs
    _nx systemctl daemon-reload
    _nx systemctl enable --now tend-smoke-tick.timer
    log "    list-timers before ($when):"
    _nx systemctl list-timers --all --no-pager tend-smoke-tick.timer >&2
    _check "list-timers shows it" _nsh 'systemctl list-timers --all --no-pager | grep -q tend-smoke-tick.timer'
    local i
    for i in $(seq 1 30); do
        _nx test -s /var/lib/tend-smoke/tick.runs && break
        sleep 0.5
    done
    _check "the oneshot ran" _nx test -s /var/lib/tend-smoke/tick.runs
    log "    ran at $(_nx date -d "@$(_nx head -n1 /var/lib/tend-smoke/tick.runs)" '+%H:%M:%S'), due $when"
    log "    list-timers after:"
    _nx systemctl list-timers --all --no-pager tend-smoke-tick.timer >&2
    _check "the service result is success" test "$(_nx systemctl show -P Result tend-smoke-tick.service)" = success
    _nx systemctl disable --now tend-smoke-tick.timer
}

_smoke_persistent() {
    local name persistent
    for name in catchup nocatchup; do
        _put "/etc/systemd/system/tend-smoke-$name.service" <<EOF
[Unit]
Description=tend smoke: $name oneshot

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /var/lib/tend-smoke; date +%%s >> /var/lib/tend-smoke/$name.runs'
EOF
    done
    local when when_s
    when="$(_nx date -d '+12 sec' '+%Y-%m-%d %H:%M:%S')"
    when_s="$(_nx date -d "$when" +%s)"
    for name in catchup nocatchup; do
        persistent=true
        [ "$name" = nocatchup ] && persistent=false
        _put "/etc/systemd/system/tend-smoke-$name.timer" <<EOF
[Unit]
Description=tend smoke: $name at $when, Persistent=$persistent

[Timer]
OnCalendar=$when
AccuracySec=1s
Persistent=$persistent

[Install]
WantedBy=timers.target
EOF
    done
    _nx rm -f /var/lib/tend-smoke/catchup.runs /var/lib/tend-smoke/nocatchup.runs \
        /var/lib/systemd/timers/stamp-tend-smoke-catchup.timer
    _nx systemctl daemon-reload
    _nx systemctl enable --now tend-smoke-catchup.timer tend-smoke-nocatchup.timer
    local stamp=/var/lib/systemd/timers/stamp-tend-smoke-catchup.timer
    log "    due at $when; stamp file after enable --now: $(_nx stat -c '%y' "$stamp" 2>/dev/null || echo '(none)')"
    _nx ls -l --time-style=full-iso /var/lib/systemd/timers/ >&2 || true
    _nx systemctl list-timers --all --no-pager 'tend-smoke-*catchup.timer' >&2

    local t0=$SECONDS
    docker stop "$_SMOKE_NODE" >/dev/null
    log "    docker stop took $((SECONDS - t0))s; waiting until the due time has passed"
    while [ "$(date +%s)" -le $((when_s + 2)) ]; do sleep 1; done
    t0=$SECONDS
    local boot_s
    boot_s="$(date +%s)"
    docker start "$_SMOKE_NODE" >/dev/null
    wait_systemd_node "$_SMOKE_NODE"
    log "    docker start + boot took $((SECONDS - t0))s"
    local i
    for i in $(seq 1 20); do
        _nx test -s /var/lib/tend-smoke/catchup.runs && break
        sleep 0.5
    done
    _check "Persistent=true: the missed run happened at boot" _nx test -s /var/lib/tend-smoke/catchup.runs
    local ran
    ran="$(_nx head -n1 /var/lib/tend-smoke/catchup.runs 2>/dev/null || echo 0)"
    log "    ran at $(date -d "@$ran" '+%H:%M:%S') (due $when, container started $(date -d "@$boot_s" '+%H:%M:%S'))"
    _check "…after the container started, not before it stopped" test "$ran" -ge "$boot_s"
    _check "Persistent=false: no run at boot" _nsh '! test -s /var/lib/tend-smoke/nocatchup.runs'
    log "    stamp file after boot: $(_nx stat -c '%y' "$stamp" 2>/dev/null || echo '(none)')"
    _nx ls -l --time-style=full-iso /var/lib/systemd/timers/ >&2 || true
    _check "the stamp file was refreshed by the catch-up run" _nsh \
        "test \$(stat -c %Y $stamp) -ge $boot_s"
    log "    LastTriggerUSec: $(_nx systemctl show -P LastTriggerUSec tend-smoke-catchup.timer)"
    _nx systemctl list-timers --all --no-pager 'tend-smoke-*catchup.timer' >&2
    # The boot ID is the host kernel's, so every container boot shares it: `journalctl
    # -b -1` finds nothing, but the persistent journal keeps the entries of both boots.
    log "    journalctl --list-boots: $(_nx journalctl --list-boots --no-pager -q | wc -l) boot(s) listed"
    _check "the persistent journal kept the run before the stop (2 timer starts)" test \
        "$(_nx journalctl --no-pager -q -u tend-smoke-catchup.timer | grep -c 'Started tend-smoke-catchup.timer')" -ge 2
    _nx systemctl disable --now tend-smoke-catchup.timer tend-smoke-nocatchup.timer
}

_smoke_host_binary() {
    local dir bin
    dir="$(mktemp -d "${TMPDIR:-/tmp}/tend-smoke.XXXXXX")"
    bin="$dir/tend-smoke-hostbin"
    if command -v rustc >/dev/null 2>&1; then
        cat >"$dir/main.rs" <<'EOF'
fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a host-built Rust binary, args {:?}", &args[1..]);
}
EOF
        rustc -O -o "$bin" "$dir/main.rs"
        log "    built with $(rustc --version)"
    else
        printf '#include <stdio.h>\nint main(void){puts("hello from a host-built C binary");return 0;}\n' >"$dir/main.c"
        cc -O2 -o "$bin" "$dir/main.c"
        log "    built with cc (no rustc on PATH)"
    fi
    log "    host glibc: $(ldd --version | head -n1)"
    docker cp "$bin" "$_SMOKE_NODE:/usr/local/bin/tend-smoke-hostbin"
    rm -rf "$dir"
    log "    node glibc: $(_nx ldd --version | head -n1)"
    _check "it runs in the node" _nsh '/usr/local/bin/tend-smoke-hostbin x | grep -q "^hello from a host-built"'
    _put /etc/systemd/system/tend-smoke-hostbin.service <<'EOF'
[Unit]
Description=tend smoke: a host-built binary as a service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/tend-smoke-hostbin as-a-service
EOF
    _nx systemctl daemon-reload
    _nx systemctl start tend-smoke-hostbin.service
    _check "and as a systemd service (output in the journal)" _nsh \
        'journalctl -u tend-smoke-hostbin --no-pager | grep -q "as-a-service"'
}

_smoke_analyze_verify() {
    _check "systemd-analyze verify accepts a good unit" \
        _nx systemd-analyze verify /etc/systemd/system/tend-smoke-hello.service
    _put /etc/systemd/system/tend-smoke-bad.service <<'EOF'
[Unit]
Description=tend smoke: a broken unit

[Service]
ExecStart=relative/path --flag
Restart=sometimes
EOF
    local out rc=0
    out="$(_nx systemd-analyze verify /etc/systemd/system/tend-smoke-bad.service 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed 's/^/    verify(bad): /' >&2
    _check "…and rejects a broken one (non-zero exit)" test "$rc" -ne 0
    _check "…naming the problem" grep -q 'relative/path' <<<"$out"
    _nx rm -f /etc/systemd/system/tend-smoke-bad.service
}

systemd_node_smoke() {
    local t0=$SECONDS
    ensure_systemd_node_image || return 1
    _SMOKE_NODE="tend-smoke-$$"
    if [ "${TEND_TEST_KEEP:-}" = 1 ]; then
        trap 'log "TEND_TEST_KEEP=1: keeping the node $_SMOKE_NODE"' EXIT
    else
        trap 'stop_systemd_node "$_SMOKE_NODE"' EXIT
    fi
    banner "smoke: boot a node ($_SMOKE_NODE)"
    local tb=$SECONDS
    start_systemd_node "$_SMOKE_NODE" || return 1
    log "    boot took $((SECONDS - tb))s; $(_nx systemctl --version | head -n1)"
    log "    $(_nx systemd-analyze 2>/dev/null | head -n1)"
    _check "a fresh node is running, not degraded" test "$(_nx systemctl is-system-running)" = running

    local c
    for c in unit_lifecycle dbus notify watchdog timer host_binary analyze_verify persistent; do
        _smoke_run "$c"
    done

    banner "smoke: summary ($((SECONDS - t0))s)"
    [ "$_SMOKE_FAIL" -eq 0 ] || log "failed: ${_SMOKE_FAILED[*]}"
    printf '%d passed, %d failed\n' "$_SMOKE_PASS" "$_SMOKE_FAIL"
    [ "$_SMOKE_FAIL" -eq 0 ]
}

# ---------------------------------------------------------------------------------------
# Run as a script: a subcommand.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        build)
            t_build=$SECONDS
            ensure_systemd_node_image
            log "systemd node: $TEND_SYSTEMD_NODE_IMAGE ready ($((SECONDS - t_build))s)"
            ;;
        start)
            ensure_systemd_node_image
            start_systemd_node "$@"
            ;;
        stop) stop_systemd_node "$@" ;;
        shell)
            name="${1:?usage: $0 shell NAME}"
            exec docker exec -it "$name" bash -l
            ;;
        list) docker ps -a --filter "label=$TEND_SYSTEMD_NODE_LABEL" ;;
        mirror) tend_debian_mirror ;;
        smoke) systemd_node_smoke ;;
        *)
            log "usage: $0 build | start NAME [docker run args...] | stop NAME | shell NAME | list | mirror | smoke"
            exit 2
            ;;
    esac
fi
