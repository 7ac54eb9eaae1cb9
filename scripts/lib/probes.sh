# Probes of a RabbitMQ node, sourced by scripts/rabbitmq4.sh and scripts/faultbroker.sh.
# They read AMQP_PORT and MGMT_PORT from the sourcing script.

# True when the port speaks AMQP 0-9-1 (answers the protocol header with a
# method frame, i.e. connection.start).
amqp_answers() {
    local first
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    first=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1 # else fd 3 is whatever the caller had there
        printf "AMQP\000\000\011\001" >&3
        head -c 1 <&3 | od -An -tx1' _ "$AMQP_PORT" 2>/dev/null) || return 1
    [ "${first// /}" = "01" ]
}

# Version reported by the management API, empty when it does not answer.
mgmt_version() {
    curl -fsS --max-time 5 -u guest:guest "http://127.0.0.1:$MGMT_PORT/api/overview" 2>/dev/null |
        sed -n 's/.*"rabbitmq_version":"\([^"]*\)".*/\1/p' || true
}

is_up() { amqp_answers && [ -n "$(mgmt_version)" ]; }

# The last lines of each of the given log files that exist, on stderr.
log_tail() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 30 "$f" | cut -c1-400 >&2
    done
}
