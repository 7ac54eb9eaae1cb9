#!/usr/bin/env bash
# A three-node RabbitMQ cluster of its own for tests/cluster: tests kill -9 its
# nodes, start them again and make the cluster forget them, so it is never one
# of the shared brokers.
#
#   --version 3 (default)  the host's RabbitMQ 3.10; node N (1..3) bkcN@localhost
#                          AMQP 127.0.0.1:568N, management 1568N, distribution
#                          2568N (N = 1..3: 5681-5683); epmd 4369
#   --version 4            RabbitMQ 4.x in the chroot of scripts/rabbitmq4.sh;
#                          node N bkdN@localhost, AMQP 127.0.0.1:5684-5686,
#                          management 15684-15686, distribution 25684-25686;
#                          the chroot's epmd 4370
#
# Each node has its own config file, env file, mnesia, log and pid file under
# /var/lib/aio-backoff/cluster/nN (version 4: /var/lib/aio-backoff-cluster4/nN
# inside the chroot), owned by the rabbitmq user. The three share an Erlang
# cookie of their own (a HOME of their own holds it), so the shared nodes'
# cookies are neither read nor changed and no node of this cluster can reach
# rabbit@localhost or rabbit4@localhost. They register with their
# installation's epmd, which is never stopped: the shared nodes use it too.
#
# Usage: scripts/cluster.sh COMMAND [N] [--version 3|4]
#   start [N]    start every node (or node N) that is not running, join the ones
#                that are not clustered, and wait until the cluster has 3 running
#                nodes (or N runs in it); a no-op when all is up. Data of a killed
#                node is kept: it rejoins by itself.
#   stop         stop every node (kill -9: its data goes) and delete the data
#   kill N       kill -9 node N's Erlang VM (its pid file names it); data kept
#   restart N    shut node N down gracefully if it runs (data kept), start it and
#                wait until it is back in the cluster; after `kill N` it starts
#                the killed node again
#   forget N     node N must be down (after `kill N`): a live node forgets it
#                (forget_cluster_node) and N's data is wiped, so `start N` brings
#                it back as a fresh node that joins the cluster again
#   status       each node's state and the cluster's members; exit 0 only when
#                the cluster has 3 running nodes
#   ctl N ARGS   rabbitmqctl ARGS against node N (e.g. ctl 2 list_queues name)
#
# Environment: CLUSTER_VERSION (default 3; --version wins), CLUSTER_TIMEOUT
# (seconds to wait for a node, default 90), RABBITMQ4_ROOT (the 4.x chroot),
# AIO_BACKOFF_DLX_PREFETCH (the at-least-once dead-letter worker's prefetch in each
# node's advanced.config: 512, as docs/topology.md recommends for a quorum ladder;
# 32 is RabbitMQ's default).
# Needs root.
set -euo pipefail
export LC_ALL=C

version=${CLUSTER_VERSION:-3}
args=()
while (($#)); do
    case $1 in
    --version) version=${2:?--version needs 3 or 4}; shift 2 ;;
    --version=*) version=${1#--version=}; shift ;;
    *) args+=("$1"); shift ;;
    esac
done
set -- "${args[@]+"${args[@]}"}"

case $version in
3)
    ROOT=/ # the host's installation
    PREFIX=bkc # node N is bkcN@localhost
    PORT_OFFSET=0 # node N: AMQP 5680+N, management 15680+N, distribution 25680+N
    CTL_DIST_BASE=35740 # CLI nodes' ports: 35740-35769
    EPMD_PORT=4369
    STATE=/var/lib/aio-backoff/cluster # as seen by the nodes
    LOCK=/var/lib/aio-backoff/cluster.lock
    TAG=cluster
    ;;
4)
    ROOT=${RABBITMQ4_ROOT:-/var/lib/aio-backoff/rabbitmq4-root}
    ROOT=${ROOT%/}
    PREFIX=bkd
    PORT_OFFSET=3 # node N: AMQP 5683+N, management 15683+N, distribution 25683+N
    CTL_DIST_BASE=35800 # CLI nodes' ports: 35800-35829
    EPMD_PORT=4370 # the chroot's epmd (scripts/rabbitmq4.sh)
    STATE=/var/lib/aio-backoff-cluster4 # inside the chroot
    LOCK=$ROOT.cluster4.lock
    TAG=cluster4
    ;;
*)
    echo "cluster: --version must be 3 or 4, got '$version'" >&2
    exit 2
    ;;
esac
BASE=${ROOT%/}$STATE # the same directory, as seen from here
NODE_COOKIE_HOME=$STATE/home # HOME of the nodes and their CLI: the cluster's own cookie
COOKIE_HOME=$BASE/home
TIMEOUT=${CLUSTER_TIMEOUT:-90}
ALL=(1 2 3)
FIRST_AMQP=$((5681 + PORT_OFFSET))
FIRST_MGMT=$((15681 + PORT_OFFSET))

log() { printf '[%s] %s\n' "$TAG" "$*"; }
die() {
    printf '[%s] ERROR: %s\n' "$TAG" "$*" >&2
    exit 1
}

# Node $1's name.
name_of() { echo "$PREFIX$1@localhost"; }

# shellcheck source=lib/process.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/process.sh"
# shellcheck source=lib/probes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/probes.sh"

[ "$(id -u)" -eq 0 ] || die "must run as root (it runs the nodes as the rabbitmq user)"

take_lock() {
    mkdir -p "$(dirname "$LOCK")"
    exec 9>>"$LOCK"
    flock -w 300 9 || die "could not lock $LOCK"
}

check_n() {
    [[ ${1:-} =~ ^[123]$ ]] || die "${2:-this command} needs a node number 1, 2 or 3, got '${1:-}'"
}

# --- one node -----------------------------------------------------------------

# Select node $1: sets the globals the helpers and lib/probes.sh read.
use() {
    N=$1
    NODE=$(name_of "$N")
    AMQP_PORT=$((5680 + PORT_OFFSET + N))
    MGMT_PORT=$((15680 + PORT_OFFSET + N))
    DIST_PORT=$((25680 + PORT_OFFSET + N))
    CTL_DIST_MIN=$((CTL_DIST_BASE + 10 * (N - 1))) # CLI nodes' ports, clear of
    CTL_DIST_MAX=$((CTL_DIST_MIN + 9))             # the other brokers'
    DIR=$BASE/n$N  # as seen from here
    NDIR=$STATE/n$N # as seen by the node
}

node_pid() { beam_pid_from "$DIR/node.pid"; }
launcher_pid() { live_pid_from "$DIR/launcher.pid"; }

# uid:gid of the installation's rabbitmq user.
rabbitmq_ids() {
    if [ "$ROOT" = / ]; then
        echo "$(id -u rabbitmq):$(id -g rabbitmq)"
    else
        echo "$(chroot "$ROOT" /usr/bin/id -u rabbitmq):$(chroot "$ROOT" /usr/bin/id -g rabbitmq)"
    fi
}

# The 4.x chroot needs /proc, /sys and /dev; scripts/rabbitmq4.sh mounts them for
# its own node and unmounts them on its stop, so mount what is missing.
mount_api() {
    [ "$ROOT" != / ] || return 0
    [ -x "$ROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] ||
        die "no RabbitMQ in $ROOT; run: scripts/rabbitmq4.sh setup"
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys" || mount -t sysfs -o ro sysfs "$ROOT/sys"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

# Everything the server and its CLI need to find this node and only this node.
# RABBITMQ_CONF_ENV_FILE points at our own file, so /etc/rabbitmq/rabbitmq-env.conf
# (which names the shared node) is not read; RABBITMQ_CONFIG_FILE replaces
# /etc/rabbitmq/rabbitmq.conf, which pins the listener to 5672.
node_env() {
    printf '%s\n' \
        PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "HOME=$NODE_COOKIE_HOME" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        "RABBITMQ_CONF_ENV_FILE=$NDIR/rabbitmq-env.conf" \
        "RABBITMQ_NODENAME=$NODE" \
        "RABBITMQ_NODE_PORT=$AMQP_PORT" \
        "RABBITMQ_DIST_PORT=$DIST_PORT" \
        "RABBITMQ_CONFIG_FILE=$NDIR/rabbitmq.conf" \
        "RABBITMQ_ADVANCED_CONFIG_FILE=$NDIR/advanced.config" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$NDIR/enabled_plugins" \
        "RABBITMQ_MNESIA_BASE=$NDIR/mnesia" \
        "RABBITMQ_LOG_BASE=$NDIR/log" \
        "RABBITMQ_PID_FILE=$NDIR/node.pid" \
        "RABBITMQ_CTL_DIST_PORT_MIN=$CTL_DIST_MIN" \
        "RABBITMQ_CTL_DIST_PORT_MAX=$CTL_DIST_MAX" \
        'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=+sbwt none +sbwtdcpu none +sbwtdio none' \
        "ERL_EPMD_PORT=$EPMD_PORT" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        'ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}'
}

# The command that runs what follows it as the installation's rabbitmq user with
# node $N's environment (in the chroot for version 4), into array RUN.
set_run() {
    local env
    mapfile -t env < <(node_env)
    if [ "$ROOT" = / ]; then
        RUN=(setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups)
    else
        RUN=(chroot --userspec="$(rabbitmq_ids)" "$ROOT")
    fi
    RUN+=(/usr/bin/env -i "${env[@]}")
}

as_rabbitmq() {
    set_run
    "${RUN[@]}" "$@"
}

ctl() { mount_api && as_rabbitmq timeout 60 rabbitmqctl -n "$NODE" "$@"; }

ensure_cookie() {
    mkdir -p "$COOKIE_HOME"
    if [ ! -s "$COOKIE_HOME/.erlang.cookie" ]; then
        (umask 077 && od -An -N20 -tx1 /dev/urandom | tr -d ' \n' | tr '[:lower:]' '[:upper:]' >"$COOKIE_HOME/.erlang.cookie")
    fi
    chown -R "$(rabbitmq_ids)" "$COOKIE_HOME"
    chmod 700 "$COOKIE_HOME"
    chmod 400 "$COOKIE_HOME/.erlang.cookie"
}

# The nodes a fresh node N tries to join as it boots: the others that run now,
# or itself alone (it forms the cluster at once instead of waiting for peers).
peers() {
    local n list=()
    for n in "${ALL[@]}"; do
        [ "$n" != "$N" ] && (use "$n" && is_up) && list+=("$n")
    done
    ((${#list[@]})) || list=("$N")
    local i=0
    for n in "${list[@]}"; do
        i=$((i + 1))
        echo "cluster_formation.classic_config.nodes.$i = $(name_of "$n")"
    done
}

write_config() {
    mkdir -p "$DIR"/{mnesia,log}
    cat >"$DIR/rabbitmq.conf" <<EOF
# Written by aio-backoff scripts/cluster.sh; changes are overwritten.
listeners.tcp.local = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
# tests fill queues with thousands of copies; never block publishers on a small disk
disk_free_limit.absolute = 50MB
# tests read queues through the management API: fresh figures
collect_statistics_interval = 500
# A fresh node joins one of these that runs as it boots (scripts/cluster.sh
# joins what is left over with rabbitmqctl join_cluster).
cluster_formation.peer_discovery_backend = classic_config
$(peers)
EOF
    # Erlang terms the new-style file has no key for: the at-least-once
    # dead-letter worker's prefetch, 512 as docs/topology.md recommends for a
    # quorum ladder (RabbitMQ's default, 32, forwards 10,000 copies several
    # times slower; AIO_BACKOFF_DLX_PREFETCH=32 gives it back)
    local prefetch=${AIO_BACKOFF_DLX_PREFETCH:-512}
    [[ $prefetch =~ ^[1-9][0-9]*$ ]] || die "AIO_BACKOFF_DLX_PREFETCH must be a positive integer, got '$prefetch'"
    echo "[{rabbit, [{dead_letter_worker_consumer_prefetch, $prefetch}]}]." >"$DIR/advanced.config"
    # read instead of the installation's rabbitmq-env.conf; node_env sets the rest
    echo '# Written by aio-backoff scripts/cluster.sh.' >"$DIR/rabbitmq-env.conf"
    echo '[rabbitmq_management].' >"$DIR/enabled_plugins"
    chown -R "$(rabbitmq_ids)" "$DIR"
}

launch() {
    [ -d "$DIR/mnesia" ] || rm -rf --one-file-system "$DIR/log" # fresh node, fresh logs
    write_config
    rm -f "$DIR/node.pid"
    mount_api
    # Own session, no terminal, lock fd closed: the node outlives this script.
    set_run
    setsid "${RUN[@]}" rabbitmq-server >"$DIR/startup.log" 2>&1 </dev/null 9>&- &
    echo $! >"$DIR/launcher.pid"
    disown $! 2>/dev/null || true
}

# Wait until node $N answers AMQP and management; die (logs shown) if it exits
# or takes too long.
wait_up() {
    local deadline=$((SECONDS + TIMEOUT)) why
    until is_up; do
        if [ -z "$(launcher_pid)" ] && [ -z "$(node_pid)" ]; then
            why="$NODE exited during startup"
        elif [ "$SECONDS" -ge "$deadline" ]; then
            why="$NODE did not answer on 127.0.0.1:$AMQP_PORT and :$MGMT_PORT within ${TIMEOUT}s"
        else
            sleep 0.3
            continue
        fi
        log_tail "$DIR/log/$NODE.log" "$DIR/startup.log"
        die "$why (logs above, full logs in $DIR/log/)"
    done
}

# The cluster members node $N knows, from its management API: one
# "name running|stopped" line each (nothing when it does not answer).
members() {
    curl -fsS --max-time 10 -u guest:guest \
        "http://127.0.0.1:$MGMT_PORT/api/nodes?columns=name,running" 2>/dev/null |
        /usr/bin/python3 -c '
import json, sys
for node in json.load(sys.stdin):
    print(node["name"], "running" if node.get("running") else "stopped")
' 2>/dev/null || true
}

running_count() { members | grep -c ' running$' || true; }

# Shut node $N down gracefully, or kill it; data stays.
stop_node() {
    local pid launcher
    pid=$(node_pid)
    launcher=$(launcher_pid)
    if [ -n "$pid" ]; then
        ctl shutdown >/dev/null 2>&1 || log "$NODE: rabbitmqctl shutdown failed, killing $pid"
        wait_gone "$pid" 10 || { kill -9 "$pid" 2>/dev/null || true; wait_gone "$pid" 10; }
    fi
    if [ -n "$launcher" ]; then
        wait_gone "$launcher" 5 || kill -9 "$launcher" 2>/dev/null || true
    fi
    rm -f "$DIR/node.pid" "$DIR/launcher.pid"
}

# --- the cluster ----------------------------------------------------------------

# The running node whose view of the cluster has the most members (the lowest
# number on a tie): the one others join. Empty when none answers.
seed() {
    local n best='' best_count=0 count
    for n in "${ALL[@]}"; do
        use "$n"
        count=$(members | wc -l)
        if ((count > best_count)); then
            best=$n
            best_count=$count
        fi
    done
    echo "$best"
}

# Join node $1 to the cluster of node $2 unless $2 already counts it as a member.
join() {
    local n=$1 peer=$2 peer_node
    use "$peer"
    peer_node=$NODE
    if members | grep -q "^$(name_of "$n") "; then
        return 0
    fi
    use "$n"
    log "$NODE: joining the cluster of $peer_node"
    local step out
    for step in stop_app "join_cluster $peer_node" start_app; do
        # shellcheck disable=SC2086 # step is a command and its argument
        out=$(ctl $step 2>&1) || die "$NODE: rabbitmqctl $step failed: $out"
    done
    wait_up
}

# Wait until node $1's peer $2 sees $3 running members (and $1 among them).
wait_cluster() {
    local n=$1 peer=$2 want=$3 deadline=$((SECONDS + TIMEOUT))
    use "$peer"
    until [ "$(running_count)" -ge "$want" ] && members | grep -q "^$(name_of "$n") running$"; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "the cluster of $(name_of "$peer") does not show $want running nodes with $(name_of "$n") within ${TIMEOUT}s: $(members | tr '\n' ',')"
        sleep 0.3
    done
}

# Launch node $N unless it answers already; false when it does.
launch_unless_up() {
    local pid
    is_up && return 1
    pid=$(node_pid)
    if [ -n "$pid" ]; then
        log "$NODE: process $pid present, waiting for it to answer"
    else
        log "$NODE: launching (amqp $AMQP_PORT, management $MGMT_PORT, dist $DIST_PORT)"
        launch
    fi
}

# Start the given nodes (those not running), then join what is not clustered;
# PEER is the node the others joined. When no node runs and the first has no
# data, it boots alone and forms the cluster before the others boot and join
# it: fresh nodes booting together hold each other's peer discovery lock and
# form three clusters. Nodes with data boot together: each waits for the others.
start_nodes() {
    local n first='' launched=()
    ensure_cookie
    use "$1"
    if [ -z "$(seed)" ] && [ ! -d "$DIR/mnesia/$NODE" ]; then
        first=$1
        if launch_unless_up; then wait_up; fi
    fi
    for n in "$@"; do
        [ "$n" = "$first" ] && continue
        use "$n"
        if launch_unless_up; then launched+=("$n"); fi
    done
    for n in ${launched[@]+"${launched[@]}"}; do
        use "$n"
        wait_up
    done
    PEER=$(seed)
    [ -n "$PEER" ] || die "no node of the cluster answers"
    for n in "${ALL[@]}"; do
        [ "$n" = "$PEER" ] && continue
        use "$n"
        is_up || continue
        join "$n" "$PEER"
    done
}

cmd_start() {
    take_lock
    local t0=$EPOCHREALTIME n nodes
    if (($#)); then
        check_n "$1" start
        nodes=("$1")
    else
        nodes=("${ALL[@]}")
    fi
    start_nodes "${nodes[@]}"
    for n in "${nodes[@]}"; do
        wait_cluster "$n" "$PEER" "${#nodes[@]}"
    done
    use "$PEER"
    log "start: RabbitMQ $(mgmt_version), $(running_count) running nodes in $(elapsed "$t0") s (amqp 127.0.0.1:$FIRST_AMQP-$((FIRST_AMQP + 2)), management $FIRST_MGMT-$((FIRST_MGMT + 2)))"
}

# Its data is deleted anyway: kill -9 is as good as a shutdown and takes no time.
cmd_stop() {
    take_lock
    local t0=$EPOCHREALTIME n pid launcher
    for n in "${ALL[@]}"; do
        use "$n"
        pid=$(node_pid)
        launcher=$(launcher_pid)
        [ -n "$pid$launcher" ] || continue
        log "stop: killing $NODE${pid:+ (pid $pid)}"
        [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
        [ -z "$pid" ] || wait_gone "$pid" 10 || die "stop: process $pid still there 10 s after SIGKILL"
        [ -z "$launcher" ] || wait_gone "$launcher" 5 || kill -9 "$launcher" 2>/dev/null || true
        rm -f "$DIR/node.pid" "$DIR/launcher.pid"
    done
    for n in "${ALL[@]}"; do
        use "$n"
        rm -rf --one-file-system "$DIR/mnesia"
    done
    rm -rf --one-file-system "$COOKIE_HOME"
    log "stop: done in $(elapsed "$t0") s (data deleted; logs in $BASE/n*/log/)"
}

cmd_kill() {
    check_n "${1:-}" kill
    take_lock
    use "$1"
    local pid launcher
    pid=$(node_pid)
    [ -n "$pid" ] || die "kill: $NODE is not running (no live pid in $DIR/node.pid)"
    kill -9 "$pid"
    wait_gone "$pid" 10 || die "kill: process $pid still there 10 s after SIGKILL"
    launcher=$(launcher_pid)
    [ -z "$launcher" ] || wait_gone "$launcher" 5 || kill -9 "$launcher" 2>/dev/null || true
    rm -f "$DIR/launcher.pid"
    log "kill: sent SIGKILL to $NODE (pid $pid); data kept, 'start $1' or 'restart $1' brings it back"
}

cmd_restart() {
    check_n "${1:-}" restart
    take_lock
    local t0=$EPOCHREALTIME name
    use "$1"
    name=$NODE
    if [ -n "$(node_pid)$(launcher_pid)" ]; then
        log "restart: shutting down $NODE (data kept)"
        stop_node
    fi
    exec 9>&- # cmd_start takes the lock again
    cmd_start "$1"
    log "restart: $name back in $(elapsed "$t0") s"
}

cmd_forget() {
    check_n "${1:-}" forget
    take_lock
    local n=$1 t0=$EPOCHREALTIME peer='' other
    use "$n"
    [ -z "$(node_pid)" ] || die "forget: $NODE is running; run 'kill $n' first"
    for other in "${ALL[@]}"; do
        [ "$other" = "$n" ] && continue
        use "$other"
        if is_up; then
            peer=$other
            break
        fi
    done
    [ -n "$peer" ] || die "forget: no other node runs to forget $(name_of "$n")"
    use "$peer"
    if members | grep -q "^$(name_of "$n") "; then
        ctl forget_cluster_node "$(name_of "$n")" >/dev/null
    fi
    use "$n"
    rm -rf --one-file-system "$DIR/mnesia"
    rm -f "$DIR/node.pid" "$DIR/launcher.pid"
    log "forget: $(name_of "$peer") forgot $NODE, whose data is wiped ($(elapsed "$t0") s); 'start $n' brings it back as a fresh node"
}

cmd_status() {
    local n ok=0 count=0 pid line
    for n in "${ALL[@]}"; do
        use "$n"
        pid=$(node_pid)
        if is_up; then
            line="running (pid $pid), amqp 127.0.0.1:$AMQP_PORT, management $MGMT_PORT; members: $(members | tr '\n' ',' | sed 's/,$//')"
            count=$(running_count)
            ((count >= ${#ALL[@]})) && ok=1
        elif [ -n "$pid" ]; then
            line="process $pid present, not answering"
        else
            line="down"
        fi
        log "$NODE: $line"
    done
    ((ok)) || { log "the cluster does not have ${#ALL[@]} running nodes"; return 1; }
}

cmd_ctl() {
    check_n "${1:-}" ctl
    use "$1"
    shift
    ctl "$@"
}

case ${1:-} in
start) shift && cmd_start "$@" ;;
stop) cmd_stop ;;
kill) cmd_kill "${2:-}" ;;
restart) cmd_restart "${2:-}" ;;
forget) cmd_forget "${2:-}" ;;
status) cmd_status ;;
ctl) shift && cmd_ctl "$@" ;;
*)
    echo "usage: $0 {start [N]|stop|kill N|restart N|forget N|status|ctl N ARGS...} [--version 3|4]" >&2
    exit 2
    ;;
esac
