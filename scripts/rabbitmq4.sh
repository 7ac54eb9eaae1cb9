#!/usr/bin/env bash
# Run a RabbitMQ 4.x broker (a Debian rabbitmq-server package) inside a
# debootstrap chroot, side by side with the host's own broker. It shares the
# host network namespace but uses its own ports, epmd, node name and cookie, so
# the host's 3.10 (5672) and both versions below can run at once:
#
#   --version 4.0 (default)  Debian trixie's rabbitmq-server 4.0.x
#       chroot /var/lib/aio-backoff/rabbitmq4-root (RABBITMQ4_ROOT)
#       AMQP 127.0.0.1:5673 (guest/guest), management 127.0.0.1:15673
#       distribution 127.0.0.1:25673, epmd 127.0.0.1:4370, node rabbit4@localhost
#       CLI distribution ports 35700-35710
#   --version 4.3            Debian sid's rabbitmq-server 4.3.x
#       chroot /var/lib/aio-backoff/rabbitmq43-root (RABBITMQ43_ROOT)
#       AMQP 127.0.0.1:5674 (guest/guest), management 127.0.0.1:15674
#       distribution 127.0.0.1:25674, epmd 127.0.0.1:4371, node rabbit43@localhost
#       CLI distribution ports 35740-35749
#
# Usage: scripts/rabbitmq4.sh {setup|start|stop|status|ensure|ctl ARGS...} [--version 4.0|4.3]
#   setup   build the chroot and install rabbitmq-server in it (idempotent)
#   start   start the broker and wait until AMQP and management answer
#   stop    stop the broker and unmount what start mounted
#   status  print the broker version; non-zero exit if it does not answer
#   ensure  setup + start (no-op when already running); what CI calls
#   ctl ARGS...  run rabbitmqctl ARGS against the node (e.g. ctl list_queues)
# --version (or --version=V) may come anywhere; "4" means 4.0. Everything after
# `ctl` other than --version goes to rabbitmqctl.
#
# Environment:
#   RABBITMQ4_VERSION  4.0 (default) or 4.3; --version wins
#   RABBITMQ4_ROOT     the 4.0 chroot (default /var/lib/aio-backoff/rabbitmq4-root)
#   RABBITMQ43_ROOT    the 4.3 chroot (default /var/lib/aio-backoff/rabbitmq43-root)
#   RABBITMQ4_MIRROR   Debian mirror (default: the one the host's apt uses)
#   RABBITMQ4_TIMEOUT  seconds to wait for the broker to answer (default 120)
#
# Needs root (debootstrap, chroot, mount).
set -euo pipefail

VERSION=${RABBITMQ4_VERSION:-4.0}
args=()
while (($#)); do
    case $1 in
    --version) VERSION=${2:?--version needs 4.0 or 4.3}; shift 2 ;;
    --version=*) VERSION=${1#--version=}; shift ;;
    *) args+=("$1"); shift ;;
    esac
done
set -- "${args[@]+"${args[@]}"}"

case $VERSION in
4 | 4.0)
    VERSION=4.0
    ROOT=${RABBITMQ4_ROOT:-/var/lib/aio-backoff/rabbitmq4-root}
    SUITE=trixie
    NODE=rabbit4@localhost
    AMQP_PORT=5673
    MGMT_PORT=15673
    DIST_PORT=25673
    EPMD_PORT=4370
    # Ports used by the CLI tools' own Erlang nodes; kept clear of the host
    # broker's default CLI range (35672-35682) and of scripts/faultbroker.sh's.
    CTL_DIST_MIN=35700
    CTL_DIST_MAX=35710
    LOG_TAG=rabbitmq4
    EXTRA_CONF=
    ;;
4.3)
    ROOT=${RABBITMQ43_ROOT:-/var/lib/aio-backoff/rabbitmq43-root}
    SUITE=sid
    NODE=rabbit43@localhost
    AMQP_PORT=5674
    MGMT_PORT=15674
    DIST_PORT=25674
    EPMD_PORT=4371
    CTL_DIST_MIN=35740
    CTL_DIST_MAX=35749
    LOG_TAG=rabbitmq4.3
    # Upstream 4.3.0 denies transient (non-durable) non-exclusive queues by
    # default; Debian patches that back to permitted. Deny them as upstream does,
    # so that the tests see what a 4.3 broker from rabbitmq.com refuses.
    EXTRA_CONF='deprecated_features.permit.transient_nonexcl_queues = false'
    ;;
*)
    echo "rabbitmq4: --version must be 4.0 or 4.3, got '$VERSION'" >&2
    exit 2
    ;;
esac
ROOT=${ROOT%/}
TIMEOUT=${RABBITMQ4_TIMEOUT:-120}
SETUP_MARKER=$ROOT/.aio-backoff-setup-done
STARTUP_LOG=/var/log/rabbitmq/startup.log # inside the chroot
CHROOT_PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Environment for the broker and its CLI tools (the rest is in rabbitmq-env.conf).
BROKER_ENV=(PATH="$CHROOT_PATH" HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8)
export LC_ALL=C

log() { printf '[%s] %s\n' "$LOG_TAG" "$*"; }
die() {
    printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2
    exit 1
}
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

# Serialise setup/start/stop; the lock lives next to the chroot.
take_lock() {
    mkdir -p "$(dirname "$ROOT")"
    exec 9>>"$ROOT.lock"
    flock -w 900 9 || die "could not lock $ROOT.lock"
}

# --- host side -------------------------------------------------------------

missing_host_tools() {
    command -v debootstrap >/dev/null || echo debootstrap
    command -v curl >/dev/null || echo curl
}

ensure_host_tools() {
    [ -n "$(missing_host_tools)" ] || return 0
    # Both versions may be set up at once: one apt-get at a time.
    (
        flock -w 900 8 || die "could not lock $(dirname "$ROOT")/host-tools.lock"
        local missing
        mapfile -t missing < <(missing_host_tools)
        [ ${#missing[@]} -eq 0 ] && exit 0
        log "installing on host: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Refresh package lists only when the install fails without it.
        apt-get install -y "${missing[@]}" ||
            { apt-get update && apt-get install -y "${missing[@]}"; }
    ) 8>>"$(dirname "$ROOT")/host-tools.lock"
}

# Archive URIs from the host's enabled apt sources (deb822 and one-line
# formats), security archives excluded.
host_mirror_candidates() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'BEGIN { RS = "" }
             /(^|\n)Enabled:[ \t]*no/ { next }
             /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ {
                 n = split($0, lines, "\n")
                 for (i = 1; i <= n; i++)
                     if (lines[i] ~ /^URIs:/) {
                         m = split(lines[i], w, /[ \t]+/)
                         for (j = 2; j <= m; j++) print w[j]
                     }
             }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -n 's/\[[^]]*\]//; s/^[ \t]*deb[ \t]\+\([^ \t]\+\).*/\1/p' "$f"
    done
}

# First host mirror that actually serves $SUITE.
pick_mirror() {
    if [ -n "${RABBITMQ4_MIRROR:-}" ]; then
        echo "${RABBITMQ4_MIRROR%/}"
        return
    fi
    local uri
    while read -r uri; do
        uri=${uri%/}
        case $uri in *security*) continue ;; esac
        if curl -fsS -o /dev/null --max-time 20 "$uri/dists/$SUITE/InRelease"; then
            echo "$uri"
            return
        fi
    done < <(host_mirror_candidates | awk '!seen[$0]++')
    die "none of the host's apt mirrors serves '$SUITE'; set RABBITMQ4_MIRROR"
}

# --- chroot plumbing -------------------------------------------------------

# PIDs of processes whose root directory is the chroot.
chroot_pids() {
    local real p r
    real=$(readlink -f "$ROOT")
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$real" ] && echo "${p#/proc/}"
    done
    return 0
}

# The broker's Erlang VM(s) in the chroot.
broker_pids() {
    local p
    for p in $(chroot_pids); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = beam.smp ] && echo "$p"
    done
    return 0
}

# True while $1 runs (a zombie does not count).
alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]
}

# Stop every process in the chroot (all started by this script): TERM, then KILL.
kill_chroot_procs() {
    local i pids
    for i in $(seq 1 20); do
        pids=$(chroot_pids)
        [ -n "$pids" ] || return 0
        # shellcheck disable=SC2086
        if [ "$i" -le 14 ]; then kill $pids 2>/dev/null || true; else kill -9 $pids 2>/dev/null || true; fi
        sleep 0.5
    done
    [ -z "$(chroot_pids)" ] || die "processes still running in $ROOT: $(chroot_pids | tr '\n' ' ')"
}

# Mount points at or below $1, deepest first.
mounts_under() {
    local dir
    dir=$(readlink -f "$1")
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
        sort -r
}

umount_under() {
    local m
    while read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m"
    done < <(mounts_under "$1")
}

mount_api() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys" || mount -t sysfs -o ro sysfs "$ROOT/sys"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

# Highest id below 1000 that is free as both uid and gid, on the host, in the
# chroot and in the other chroots next to it (the other 4.x version), so the
# broker's user owns nothing and signals nothing outside its chroot.
free_system_id() {
    local n db f
    for ((n = 999; n >= 100; n--)); do
        for db in passwd group; do
            getent "$db" "$n" >/dev/null && continue 2
            for f in "$ROOT/etc/$db" "$(dirname "$ROOT")"/*/etc/"$db"; do
                [ -r "$f" ] || continue
                awk -F: -v n="$n" '$3 == n { f = 1 } END { exit !f }' "$f" && continue 3
            done
        done
        echo "$n"
        return 0
    done
    die "no free system uid/gid"
}

# Run a command in the chroot as root with a clean environment.
in_chroot() {
    chroot "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# uid:gid of the chroot's rabbitmq user.
rabbitmq_ids() {
    echo "$(chroot "$ROOT" /usr/bin/id -u rabbitmq):$(chroot "$ROOT" /usr/bin/id -g rabbitmq)"
}

# Run a command in the chroot as the rabbitmq user with the broker's env.
as_rabbitmq() {
    chroot --userspec="$(rabbitmq_ids)" "$ROOT" /usr/bin/env -i "${BROKER_ENV[@]}" "$@"
}

# Broker configuration, rewritten on every start so edits here take effect.
write_config() {
    local etc=$ROOT/etc/rabbitmq
    mkdir -p "$etc"
    cat >"$etc/rabbitmq.conf" <<EOF
# Written by aio-backoff scripts/rabbitmq4.sh; changes are overwritten.
listeners.tcp.local = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
$EXTRA_CONF
EOF
    # Sourced by the server and CLI scripts, so rabbitmqctl inside the chroot
    # finds this node through its own epmd.
    cat >"$etc/rabbitmq-env.conf" <<EOF
# Written by aio-backoff scripts/rabbitmq4.sh; changes are overwritten.
NODENAME=$NODE
DIST_PORT=$DIST_PORT
CTL_DIST_PORT_MIN=$CTL_DIST_MIN
CTL_DIST_PORT_MAX=$CTL_DIST_MAX
export ERL_EPMD_PORT=$EPMD_PORT
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    # Offline plugin enable: the broker reads this file at boot.
    echo '[rabbitmq_management].' >"$etc/enabled_plugins"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
}

# --- probes ----------------------------------------------------------------

# shellcheck source=lib/probes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/probes.sh"

# --- subcommands -----------------------------------------------------------

cmd_setup() {
    local t0=$EPOCHREALTIME
    need_root
    take_lock
    ensure_host_tools
    if [ -f "$SETUP_MARKER" ]; then
        log "setup: already done ($ROOT)"
        return 0
    fi
    if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
        [ ! -e "$ROOT" ] || rmdir "$ROOT" 2>/dev/null ||
            die "$ROOT exists but is not a Debian root; remove it first"
        local mirror tmp=$ROOT.partial
        mirror=$(pick_mirror)
        log "setup: debootstrap $SUITE (minbase) from $mirror into $ROOT"
        # Build in a scratch dir and move into place only when complete.
        if [ -e "$tmp" ]; then
            umount_under "$tmp"
            rm -rf --one-file-system "$tmp"
        fi
        debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror"
        mv "$tmp" "$ROOT"
    fi

    log "setup: installing rabbitmq-server in the chroot"
    # Keep maintainer scripts from starting the service during install.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    printf '%s\n' 'Acquire::Languages "none";' 'Acquire::Check-Valid-Until "false";' \
        'Dpkg::Use-Pty "0";' >"$ROOT/etc/apt/apt.conf.d/99aio-backoff"
    # Create the broker's user first with an id unused on the host; the
    # package's own default would reuse a host service's uid.
    if ! grep -q '^rabbitmq:' "$ROOT/etc/passwd"; then
        local id
        id=$(free_system_id)
        in_chroot groupadd --system --gid "$id" rabbitmq
        in_chroot useradd --system --uid "$id" --gid rabbitmq --no-create-home \
            --home-dir /var/lib/rabbitmq --shell /usr/sbin/nologin \
            --comment 'RabbitMQ messaging server' rabbitmq
    fi
    write_config
    mount_api
    trap 'umount_under "$ROOT"' EXIT
    in_chroot dpkg --configure -a # finish an install cut short by a previous run
    in_chroot apt-get update
    in_chroot apt-get install -y --no-install-recommends rabbitmq-server
    in_chroot apt-get clean
    umount_under "$ROOT"
    trap - EXIT
    write_config # the package may have shipped its own enabled_plugins

    local version
    # shellcheck disable=SC2016
    version=$(in_chroot dpkg-query -W -f '${Version}' rabbitmq-server)
    touch "$SETUP_MARKER"
    log "setup: rabbitmq-server $version installed in $(elapsed "$t0") s"
}

cmd_start() {
    need_root
    [ -f "$SETUP_MARKER" ] || die "not set up; run: $0 setup --version $VERSION"
    take_lock
    if is_up; then
        log "start: already running (RabbitMQ $(mgmt_version) on 127.0.0.1:$AMQP_PORT)"
        return 0
    fi
    local t0=$EPOCHREALTIME pid
    pid=$(broker_pids | head -n 1)
    if [ -n "$pid" ]; then
        # Started earlier but not answering yet: wait for it below.
        log "start: broker process $pid already present, waiting for it to answer"
    else
        write_config
        mount_api
        mkdir -p "$(dirname "$ROOT$STARTUP_LOG")"
        log "start: launching $NODE (amqp $AMQP_PORT, management $MGMT_PORT, dist $DIST_PORT, epmd $EPMD_PORT)"
        # Own session, no terminal, lock fd closed: the broker outlives this script.
        setsid chroot --userspec="$(rabbitmq_ids)" "$ROOT" /usr/bin/env -i "${BROKER_ENV[@]}" \
            rabbitmq-server >"$ROOT$STARTUP_LOG" 2>&1 </dev/null 9>&- &
        pid=$!
        disown "$pid" 2>/dev/null || true
    fi

    local deadline=$((SECONDS + TIMEOUT)) why=
    until is_up; do
        if ! alive "$pid"; then
            why="broker exited during startup"
        elif [ "$SECONDS" -ge "$deadline" ]; then
            why="broker did not answer on 127.0.0.1:$AMQP_PORT and :$MGMT_PORT within ${TIMEOUT}s"
        else
            sleep 1
            continue
        fi
        log_tail "$ROOT/var/log/rabbitmq/$NODE.log" "$ROOT$STARTUP_LOG"
        log "start: $why; cleaning up"
        kill_chroot_procs
        umount_under "$ROOT"
        die "$why (logs above, full logs in $ROOT/var/log/rabbitmq/)"
    done
    log "start: RabbitMQ $(mgmt_version) up in $(elapsed "$t0") s (amqp://guest:guest@127.0.0.1:$AMQP_PORT/, http://127.0.0.1:$MGMT_PORT/)"
}

cmd_stop() {
    need_root
    [ -d "$ROOT" ] || die "no chroot at $ROOT"
    take_lock
    local t0=$EPOCHREALTIME
    if [ -n "$(broker_pids)" ]; then
        log "stop: shutting down $NODE"
        as_rabbitmq timeout 90 rabbitmqctl shutdown >/dev/null 2>&1 ||
            log "stop: rabbitmqctl shutdown failed, terminating processes"
    else
        log "stop: broker not running"
    fi
    kill_chroot_procs # epmd and anything else left behind
    umount_under "$ROOT"
    log "stop: done in $(elapsed "$t0") s"
}

cmd_status() {
    local version
    version=$(mgmt_version)
    if amqp_answers && [ -n "$version" ]; then
        log "running: RabbitMQ $version, node $NODE, amqp 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$MGMT_PORT"
        return 0
    fi
    if amqp_answers; then
        log "not ready: AMQP answers on $AMQP_PORT but management on $MGMT_PORT does not"
    else
        log "not running (nothing answers AMQP on 127.0.0.1:$AMQP_PORT)"
    fi
    return 1
}

cmd_ctl() {
    need_root
    [ -f "$SETUP_MARKER" ] || die "not set up; run: $0 setup --version $VERSION"
    as_rabbitmq rabbitmqctl "$@"
}

cmd_ensure() {
    local t0=$EPOCHREALTIME
    cmd_setup
    exec 9>&- # release the lock before start takes it again
    cmd_start
    log "ensure: done in $(elapsed "$t0") s"
}

case ${1:-} in
setup) cmd_setup ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
ensure) cmd_ensure ;;
ctl) shift && cmd_ctl "$@" ;;
*)
    echo "usage: $0 {setup|start|stop|status|ensure|ctl ARGS...} [--version 4.0|4.3]" >&2
    exit 2
    ;;
esac
