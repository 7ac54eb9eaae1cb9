#!/usr/bin/env bash
# A RabbitMQ 4.x node of its own, in the chroot of scripts/rabbitmq4.sh, with extra
# plugins taken from a directory given to it (e.g. the delayed-message exchange for
# the "plugin" topology). This script builds nothing and downloads nothing: the
# directory must already hold the plugins, built for the chroot's RabbitMQ, as
# directory plugins (NAME-VERSION/ebin/NAME.app + *.beam) or .ez archives.
#
#   node plugin4@localhost
#   AMQP 127.0.0.1:5695 (guest/guest), management 15695, distribution 25695
#
# The shared brokers (5672 on the host, 5673 in the chroot) are never touched: this
# node has its own config, env file, enabled-plugins file, mnesia, logs and pid
# file, and shares only the chroot's epmd (4370) and Erlang cookie.
#
# Usage: scripts/pluginbroker.sh {start|stop|restart|kill|status|ctl ARGS...}
#   start    copy the plugins in, start the node, wait until AMQP and management
#            answer; a no-op when it is up already. Keeps the data of a killed node.
#   stop     shut the node down (kill -9 if it does not stop) and delete its data
#   restart  shut the node down gracefully and start it again; data kept
#   kill     kill -9 the node's Erlang VM; `start` brings it back with its data
#   status   print the node's version; non-zero exit if it does not answer
#   ctl ARGS run rabbitmqctl ARGS against the node
#
# Environment:
#   AIO_BACKOFF_PLUGINS_DIR  host directory holding the extra plugins; copied into
#                            the node's state dir on every start, since the node
#                            only sees the chroot (unset: the last copy is reused)
#   PLUGINBROKER_ENABLE      plugins to enable besides rabbitmq_management,
#                            separated by spaces or commas (default: every plugin
#                            in AIO_BACKOFF_PLUGINS_DIR, named by its directory or
#                            .ez file without the -VERSION suffix)
#   PLUGINBROKER_TIMEOUT     seconds to wait for the node (default 90)
#   RABBITMQ4_ROOT           the chroot (default /var/lib/aio-backoff/rabbitmq4-root)
# Needs root.
set -euo pipefail
export LC_ALL=C

ROOT=${RABBITMQ4_ROOT:-/var/lib/aio-backoff/rabbitmq4-root}
ROOT=${ROOT%/}
TIMEOUT=${PLUGINBROKER_TIMEOUT:-90}
NODE=plugin4@localhost
AMQP_PORT=5695
MGMT_PORT=15695
DIST_PORT=25695
EPMD_PORT=4370 # the chroot's epmd (scripts/rabbitmq4.sh)
CTL_DIST_MIN=35740
CTL_DIST_MAX=35749
STATE=/var/lib/aio-backoff-plugin4 # inside the chroot
HOST_STATE=$ROOT$STATE             # the same directory, as seen from here
LOCK=$ROOT.plugin4.lock
PID_FILE=$STATE/node.pid
LAUNCHER_PID_FILE=$HOST_STATE/launcher.pid

log() { printf '[pluginbroker] %s\n' "$*"; }
die() {
    printf '[pluginbroker] ERROR: %s\n' "$*" >&2
    exit 1
}
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it runs the node as the chroot's rabbitmq user)"

take_lock() {
    exec 9>>"$LOCK"
    flock -w 300 9 || die "could not lock $LOCK"
}

rabbitmq_ids() {
    echo "$(chroot "$ROOT" /usr/bin/id -u rabbitmq):$(chroot "$ROOT" /usr/bin/id -g rabbitmq)"
}

# The installation's own plugins directory (rabbitmq_server-VERSION/plugins).
server_plugins_dir() {
    local d
    for d in "$ROOT"/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins; do
        [ -d "$d" ] && { echo "${d#"$ROOT"}"; return 0; }
    done
    die "no rabbitmq_server-*/plugins in $ROOT/usr/lib/rabbitmq/lib; run: scripts/rabbitmq4.sh setup"
}

# Everything the server and its CLI need to find this node and only this node.
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
        "RABBITMQ_PLUGINS_DIR=$(server_plugins_dir):$STATE/plugins" \
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

# scripts/rabbitmq4.sh unmounts /proc, /sys and /dev on its stop; mount what is missing.
mount_api() {
    [ -x "$ROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] ||
        die "no RabbitMQ in $ROOT; run: scripts/rabbitmq4.sh setup"
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys" || mount -t sysfs -o ro sysfs "$ROOT/sys"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

# Names of the plugins in the extra directory: NAME-VERSION[.ez] -> NAME.
extra_plugin_names() {
    local entry name
    for entry in "$HOST_STATE"/plugins/*; do
        [ -e "$entry" ] || continue
        name=${entry##*/}
        name=${name%.ez}
        echo "${name%%-[0-9]*}"
    done
}

copy_plugins() {
    local src=${AIO_BACKOFF_PLUGINS_DIR:-}
    if [ -z "$src" ]; then
        # a restart without the variable keeps the copy the last start made
        compgen -G "$HOST_STATE/plugins/*" >/dev/null && return 0
        die "set AIO_BACKOFF_PLUGINS_DIR to the directory holding the extra plugins"
    fi
    [ -d "$src" ] || die "AIO_BACKOFF_PLUGINS_DIR=$src is not a directory"
    compgen -G "$src/*" >/dev/null || die "AIO_BACKOFF_PLUGINS_DIR=$src is empty; put the plugins (NAME-VERSION/ebin or .ez) there"
    rm -rf --one-file-system "$HOST_STATE/plugins"
    mkdir -p "$HOST_STATE/plugins"
    cp -R "$src"/. "$HOST_STATE/plugins/"
}

write_config() {
    mkdir -p "$HOST_STATE"/{mnesia,log}
    cat >"$HOST_STATE/rabbitmq.conf" <<EOF
# Written by aio-backoff scripts/pluginbroker.sh; changes are overwritten.
listeners.tcp.local = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
disk_free_limit.absolute = 50MB
collect_statistics_interval = 500
EOF
    echo '# Written by aio-backoff scripts/pluginbroker.sh.' >"$HOST_STATE/rabbitmq-env.conf"
    local names=() n
    if [ -n "${PLUGINBROKER_ENABLE:-}" ]; then
        read -ra names <<<"${PLUGINBROKER_ENABLE//,/ }"
    else
        mapfile -t names < <(extra_plugin_names)
    fi
    for n in "${names[@]}"; do
        [[ $n =~ ^[a-z][a-z0-9_]*$ ]] || die "not a plugin name: '$n' (PLUGINBROKER_ENABLE)"
    done
    local list=rabbitmq_management
    for n in "${names[@]}"; do list+=",$n"; done
    echo "[$list]." >"$HOST_STATE/enabled_plugins"
    chown -R "$(rabbitmq_ids)" "$HOST_STATE"
}

# The node's Erlang VM, from its pid file, if it runs (a zombie does not count).
node_pid() {
    local pid state
    pid=$(cat "$HOST_STATE/node.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 0
    [[ $state == Z* ]] && return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ] || return 0
    echo "$pid"
}

launcher_pid() {
    local pid
    pid=$(cat "$LAUNCHER_PID_FILE" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

# shellcheck source=lib/probes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/probes.sh"

wait_gone() { # pid seconds
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z ]; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

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
        [ -d "$HOST_STATE/mnesia" ] || rm -rf --one-file-system "$HOST_STATE/log"
        copy_plugins
        write_config
        rm -f "$HOST_STATE/node.pid"
        log "start: launching $NODE (amqp $AMQP_PORT, management $MGMT_PORT, dist $DIST_PORT; plugins $(cat "$HOST_STATE/enabled_plugins"))"
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
        mount_api
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
    mount_api
    stop_node
    exec 9>&- # cmd_start takes the lock again
    cmd_start
    log "restart: done in $(elapsed "$t0") s"
}

cmd_kill() {
    take_lock
    local pid launcher
    pid=$(node_pid)
    [ -n "$pid" ] || die "kill: $NODE is not running (no live pid in $HOST_STATE/node.pid)"
    kill -9 "$pid"
    wait_gone "$pid" 10 || die "kill: process $pid still there 10 s after SIGKILL"
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
    echo "usage: $0 {start|stop|restart|kill|status|ctl ARGS...}" >&2
    exit 2
    ;;
esac
