# shellcheck shell=bash
# Processes of a RabbitMQ node we started, sourced by scripts/faultbroker.sh and
# scripts/cluster.sh. In 3.10 the node name is not on the beam command line, so a
# node's Erlang VM is found through its pid file.

# Seconds since $1 (an $EPOCHREALTIME), one decimal.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# The Erlang VM named by pid file $1, if it runs (a zombie does not count).
beam_pid_from() {
    local pid state
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 0
    [[ $state == Z* ]] && return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = beam.smp ] || return 0
    echo "$pid"
}

# The process named by pid file $1 (the shell that launched a node), if alive.
live_pid_from() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

# Wait until process $1 is gone (or a zombie), at most $2 seconds.
wait_gone() {
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}
