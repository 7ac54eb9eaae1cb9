#!/usr/bin/env bash
# A RabbitMQ node of its own for the fault suite (tests/faults): tests restart it,
# kill -9 it and crash its queues, so it is never one of the shared brokers.
#
#   --version 3 (default)  the host's RabbitMQ 3.10, node faults3@localhost
#                          AMQP 127.0.0.1:5690, management 15690, distribution 25690
#   --version 4            RabbitMQ 4.0 in the chroot of scripts/rabbitmq4.sh,
#                          node faults4@localhost
#                          AMQP 127.0.0.1:5691, management 15691, distribution 25691
#   --version 4.3          RabbitMQ 4.3 in the chroot of scripts/rabbitmq4.sh --version
#                          4.3, node faults43@localhost
#                          AMQP 127.0.0.1:5693, management 15693, distribution 25693
#                          (not 5692: its management port would be 15692, the
#                          Prometheus plugin's)
#
# Each node has its own config file, env file, mnesia, log and pid file, owned by
# the rabbitmq user. It shares the epmd and the Erlang cookie of its installation
# (the host's on 4369, the 4.0 chroot's on 4370, the 4.3 chroot's on 4371) and never
# stops any of them, so the shared nodes (rabbit@localhost on 5672, rabbit4@localhost
# on 5673, rabbit43@localhost on 5674) are not disturbed.
#
# Usage: scripts/faultbroker.sh {start|stop|restart|kill|status|ctl ARGS...} [--version 3|4|4.3]
#   start    start the node and wait until AMQP and management answer; a no-op
#            when it is up already. Keeps the data of a killed node.
#   stop     shut the node down (kill -9 if it does not stop) and delete its data
#   restart  shut the node down gracefully and start it again; durable queues and
#            persistent messages survive
#   kill     kill -9 the node's Erlang VM (its pid file names it) and wait until it
#            is gone; `start` brings it back with its data
#   status   print the node's version; non-zero exit if it does not answer
#   ctl ARGS run rabbitmqctl ARGS against the node (e.g. ctl close_all_connections x)
#
# Environment: FAULTBROKER_VERSION (default 3; --version wins), FAULTBROKER_TIMEOUT
# (seconds to wait for the node, default 90), RABBITMQ4_ROOT (the 4.0 chroot),
# RABBITMQ43_ROOT (the 4.3 chroot).
# Needs root.
set -euo pipefail
export LC_ALL=C

version=${FAULTBROKER_VERSION:-3}
args=()
while (($#)); do
    case $1 in
    --version) version=${2:?--version needs 3, 4 or 4.3}; shift 2 ;;
    --version=*) version=${1#--version=}; shift ;;
    *) args+=("$1"); shift ;;
    esac
done
set -- "${args[@]+"${args[@]}"}"

TIMEOUT=${FAULTBROKER_TIMEOUT:-90}
EXTRA_CONF=
CHROOT_VERSION=
case $version in
3)
    ROOT=/ # the host's installation
    NODE=faults3@localhost
    AMQP_PORT=5690
    MGMT_PORT=15690
    DIST_PORT=25690
    EPMD_PORT=4369
    CTL_DIST_MIN=35720
    CTL_DIST_MAX=35729
    STATE=/var/lib/aio-backoff/faults3 # as seen by the node
    LOCK=/var/lib/aio-backoff/faults3.lock
    ;;
4)
    ROOT=${RABBITMQ4_ROOT:-/var/lib/aio-backoff/rabbitmq4-root}
    ROOT=${ROOT%/}
    NODE=faults4@localhost
    AMQP_PORT=5691
    MGMT_PORT=15691
    DIST_PORT=25691
    EPMD_PORT=4370 # the chroot's epmd (scripts/rabbitmq4.sh)
    CTL_DIST_MIN=35730
    CTL_DIST_MAX=35739
    STATE=/var/lib/aio-backoff-faults4 # inside the chroot
    LOCK=$ROOT.faults4.lock
    CHROOT_VERSION=4.0 # scripts/rabbitmq4.sh's
    ;;
4.3)
    ROOT=${RABBITMQ43_ROOT:-/var/lib/aio-backoff/rabbitmq43-root}
    ROOT=${ROOT%/}
    NODE=faults43@localhost
    AMQP_PORT=5693
    MGMT_PORT=15693
    DIST_PORT=25693
    EPMD_PORT=4371 # the 4.3 chroot's epmd (scripts/rabbitmq4.sh --version 4.3)
    CTL_DIST_MIN=35750
    CTL_DIST_MAX=35759
    STATE=/var/lib/aio-backoff-faults43 # inside the chroot
    LOCK=$ROOT.faults43.lock
    CHROOT_VERSION=4.3
    # as scripts/rabbitmq4.sh: deny what upstream 4.3 denies (Debian permits it)
    EXTRA_CONF='deprecated_features.permit.transient_nonexcl_queues = false'
    ;;
*)
    echo "faultbroker: --version must be 3, 4 or 4.3, got '$version'" >&2
    exit 2
    ;;
esac
HOST_STATE=${ROOT%/}$STATE # the same directory, as seen from here
PID_FILE=$STATE/node.pid
LAUNCHER_PID_FILE=$HOST_STATE/launcher.pid # the shell that started the node

log() { printf '[faultbroker %s] %s\n' "$version" "$*"; }
die() {
    printf '[faultbroker %s] ERROR: %s\n' "$version" "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it runs the node as the rabbitmq user)"

take_lock() {
    mkdir -p "$(dirname "$LOCK")"
    exec 9>>"$LOCK"
    flock -w 300 9 || die "could not lock $LOCK"
}

# --- running things as the node's user ---------------------------------------

rabbitmq_ids() {
    echo "$(chroot "$ROOT" /usr/bin/id -u rabbitmq):$(chroot "$ROOT" /usr/bin/id -g rabbitmq)"
}

# Everything the server and its CLI need to find this node and only this node.
# RABBITMQ_CONF_ENV_FILE points at our own file, so the installation's
# rabbitmq-env.conf (which names the shared node) is not read.
node_env() {
    printf '%s\n' \
        PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        "RABBITMQ_CONF_ENV_FILE=$STATE/rabbitmq-env.conf" \
        "RABBITMQ_NODENAME=$NODE" \
        "RABBITMQ_NODE_PORT=$AMQP_PORT" \
        "RABBITMQ_DIST_PORT=$DIST_PORT" \
        "RABBITMQ_CONFIG_FILE=$STATE/rabbitmq.conf" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/enabled_plugins" \
        "RABBITMQ_MNESIA_BASE=$STATE/mnesia" \
        "RABBITMQ_LOG_BASE=$STATE/log" \
        "RABBITMQ_PID_FILE=$PID_FILE" \
        "RABBITMQ_CTL_DIST_PORT_MIN=$CTL_DIST_MIN" \
        "RABBITMQ_CTL_DIST_PORT_MAX=$CTL_DIST_MAX" \
        "ERL_EPMD_PORT=$EPMD_PORT" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        'ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}'
}

as_rabbitmq() {
    local env
    mapfile -t env < <(node_env)
    chroot --userspec="$(rabbitmq_ids)" "$ROOT" /usr/bin/env -i "${env[@]}" "$@"
}

ctl() { mount_api; as_rabbitmq rabbitmqctl -n "$NODE" "$@"; }

# A 4.x chroot needs /proc, /sys and /dev; scripts/rabbitmq4.sh mounts them for
# its own node and unmounts them on its stop, so mount what is missing.
mount_api() {
    [ "$ROOT" != / ] || return 0
    [ -x "$ROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] ||
        die "no RabbitMQ in $ROOT; run: scripts/rabbitmq4.sh setup --version $CHROOT_VERSION"
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys" || mount -t sysfs -o ro sysfs "$ROOT/sys"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

write_config() {
    mkdir -p "$HOST_STATE"/{mnesia,log}
    cat >"$HOST_STATE/rabbitmq.conf" <<EOF
# Written by aio-backoff scripts/faultbroker.sh; changes are overwritten.
listeners.tcp.local = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
# the suite fills queues with 10,000 copies; never block publishers on a small disk
disk_free_limit.absolute = 50MB
# the suite reads queues and connections through the management API: fresh figures
collect_statistics_interval = 500
$EXTRA_CONF
EOF
    # read instead of the installation's rabbitmq-env.conf; node_env sets the rest
    echo '# Written by aio-backoff scripts/faultbroker.sh.' >"$HOST_STATE/rabbitmq-env.conf"
    echo '[rabbitmq_management].' >"$HOST_STATE/enabled_plugins"
    chown -R "$(rabbitmq_ids)" "$HOST_STATE"
}

# --- probes -------------------------------------------------------------------

# shellcheck source=lib/process.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/process.sh"
# shellcheck source=lib/probes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/probes.sh"

# The node's Erlang VM, from its pid file, if it runs.
node_pid() { beam_pid_from "$HOST_STATE/node.pid"; }
launcher_pid() { live_pid_from "$LAUNCHER_PID_FILE"; }

# --- subcommands ----------------------------------------------------------------

cmd_start() {
    take_lock
    if is_up; then
        log "start: already running (RabbitMQ $(mgmt_version), node $NODE, amqp 127.0.0.1:$AMQP_PORT)"
        return 0
    fi
    local t0=$EPOCHREALTIME pid
    pid=$(node_pid)
    if [ -n "$pid" ]; then
        log "start: node process $pid already present, waiting for it to answer"
    else
        mount_api
        # a fresh node (after stop) starts with fresh logs too
        [ -d "$HOST_STATE/mnesia" ] || rm -rf --one-file-system "$HOST_STATE/log"
        write_config
        rm -f "$HOST_STATE/node.pid"
        log "start: launching $NODE (amqp $AMQP_PORT, management $MGMT_PORT, dist $DIST_PORT)"
        local env
        mapfile -t env < <(node_env)
        # Own session, no terminal, lock fd closed: the node outlives this script.
        setsid chroot --userspec="$(rabbitmq_ids)" "$ROOT" /usr/bin/env -i "${env[@]}" \
            rabbitmq-server >"$HOST_STATE/startup.log" 2>&1 </dev/null 9>&- &
        echo $! >"$LAUNCHER_PID_FILE"
        disown $! 2>/dev/null || true
    fi
    local deadline=$((SECONDS + TIMEOUT)) why=
    until is_up; do
        if [ -z "$(launcher_pid)" ] && [ -z "$(node_pid)" ]; then
            why="the node exited during startup"
        elif [ "$SECONDS" -ge "$deadline" ]; then
            why="the node did not answer on 127.0.0.1:$AMQP_PORT and :$MGMT_PORT within ${TIMEOUT}s"
        else
            sleep 0.3
            continue
        fi
        log_tail "$HOST_STATE/log/$NODE.log" "$HOST_STATE/startup.log"
        stop_node
        die "$why (logs above, full logs in $HOST_STATE/log/)"
    done
    log "start: RabbitMQ $(mgmt_version) up in $(elapsed "$t0") s (amqp://guest:guest@127.0.0.1:$AMQP_PORT/, http://127.0.0.1:$MGMT_PORT/)"
}

# Shut the node down gracefully, or kill it; data stays.
stop_node() {
    local pid launcher
    pid=$(node_pid)
    launcher=$(launcher_pid)
    if [ -n "$pid" ]; then
        as_rabbitmq timeout 60 rabbitmqctl -n "$NODE" shutdown >/dev/null 2>&1 ||
            log "stop: rabbitmqctl shutdown failed, killing $pid"
        wait_gone "$pid" 10 || { kill -9 "$pid" 2>/dev/null || true; wait_gone "$pid" 10; }
    fi
    if [ -n "$launcher" ]; then
        wait_gone "$launcher" 5 || kill -9 "$launcher" 2>/dev/null || true
    fi
    rm -f "$HOST_STATE/node.pid" "$LAUNCHER_PID_FILE"
}

cmd_stop() {
    take_lock
    local t0=$EPOCHREALTIME
    if [ -n "$(node_pid)$(launcher_pid)" ]; then
        log "stop: shutting down $NODE"
        stop_node
    else
        log "stop: $NODE not running"
    fi
    rm -rf --one-file-system "$HOST_STATE/mnesia"
    log "stop: done in $(elapsed "$t0") s (data deleted; logs in $HOST_STATE/log/)"
}

cmd_restart() {
    take_lock
    local t0=$EPOCHREALTIME
    log "restart: shutting down $NODE (data kept)"
    stop_node
    exec 9>&- # cmd_start takes the lock again
    cmd_start
    log "restart: done in $(elapsed "$t0") s"
}

cmd_kill() {
    take_lock
    local pid
    pid=$(node_pid)
    [ -n "$pid" ] || die "kill: $NODE is not running (no live pid in $HOST_STATE/node.pid)"
    kill -9 "$pid"
    wait_gone "$pid" 10 || die "kill: process $pid still there 10 s after SIGKILL"
    local launcher
    launcher=$(launcher_pid)
    [ -z "$launcher" ] || wait_gone "$launcher" 5 || kill -9 "$launcher" 2>/dev/null || true
    rm -f "$LAUNCHER_PID_FILE"
    log "kill: sent SIGKILL to $NODE (pid $pid); data kept, 'start' brings it back"
}

cmd_status() {
    local running
    running=$(mgmt_version)
    if amqp_answers && [ -n "$running" ]; then
        log "running: RabbitMQ $running, node $NODE (pid $(node_pid)), amqp 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$MGMT_PORT"
        return 0
    fi
    log "not running (nothing answers AMQP on 127.0.0.1:$AMQP_PORT and management on $MGMT_PORT)"
    return 1
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_restart ;;
kill) cmd_kill ;;
status) cmd_status ;;
ctl) shift && ctl "$@" ;;
*)
    echo "usage: $0 {start|stop|restart|kill|status|ctl ARGS...} [--version 3|4|4.3]" >&2
    exit 2
    ;;
esac
