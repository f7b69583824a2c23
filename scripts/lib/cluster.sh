# shellcheck shell=bash
# Shared machinery of the scripts that run muster's compose clusters
# (scripts/compose-test.sh, scripts/fault-test.sh; scripts/bench-vs-etcd.sh
# uses only its generic helpers: say, die, now_ms, port_free,
# install_missing). Source it after
# `cd`-ing to the repository root and setting `log_name` (the prefix of
# every message); it defines functions and a few variables, and runs
# nothing until they are called:
#
#   install_missing [PKG...] install these Debian packages (root)
#   cluster_tools [PKG...]   install what is missing (docker-compose,
#                            etcd-client, jq, plus PKG...), pick the compose
#                            CLI, check that a docker engine answers
#   cluster_image            build muster:dev, or reuse it (MUSTER_REUSE_IMAGE=1)
#   cluster_place PREFIX     a free /24 and free loopback ports; project
#                            names PREFIX3-<run>, PREFIX5-<run>; a work dir
#   dc 3|5 ARGS, dc_quiet    compose for the 3- or 5-member project, bounded
#   cluster_up 3|5 LIMIT     up -d, then wait_ready; the containers' IDs cached
#   cluster_down 3|5 RC      logs when RC != 0 (or MUSTER_KEEP_LOGS=1), down -v
#   ctl ARGS                 etcdctl, bounded
#   endpoints, leader_of, cluster_ready, wait_ready, container_id, member_ip
#   put_retrying, writer, check_acked   the etcdctl background writer
#
# Every external command is bounded by `timeout`; when `deadline_ms` is set
# (milliseconds since the epoch), by what is left of it as well (`limit`).

say() { echo "$log_name: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
# set_file FILE TEXT: replaces FILE at once (a background reader may read it).
set_file() { echo "$2" >"$1.new" && mv "$1.new" "$1"; }

deadline_ms=""
# limit SECONDS: SECONDS, or what is left until deadline_ms when that is
# less (at least 1).
limit() {
    local s=$1 left
    if [ -n "$deadline_ms" ]; then
        left=$(((deadline_ms - $(now_ms)) / 1000))
        ((left >= s)) || s=$left
        ((s >= 1)) || s=1
    fi
    echo "$s"
}

# --- tools and image --------------------------------------------------------

# install_missing [PKG...]: installs the named Debian packages (as root);
# nothing when none is named.
install_missing() {
    (($#)) || return 0
    [ "$(id -u)" -eq 0 ] || die "missing $* (install them, or run as root)"
    say "installing $*"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        "$@" >/dev/null
}

cluster_tools() {
    local missing=("$@")
    command -v etcdctl >/dev/null || missing+=(etcd-client)
    command -v jq >/dev/null || missing+=(jq)
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
        missing+=(docker-compose)
    fi
    install_missing "${missing[@]}"
    if docker compose version >/dev/null 2>&1; then
        compose=(docker compose)
    else
        compose=(docker-compose)
    fi
    timeout 20 docker info >/dev/null 2>&1 || die "no docker engine answers"
}

cluster_image() {
    export MUSTER_IMAGE=${MUSTER_IMAGE:-muster:dev}
    if [ "${MUSTER_REUSE_IMAGE:-0}" = 1 ] && docker image inspect "$MUSTER_IMAGE" >/dev/null 2>&1; then
        say "reusing image $MUSTER_IMAGE"
    else
        bash scripts/build-image.sh
    fi
    docker image inspect "$MUSTER_IMAGE" --format '{{.Size}}' |
        awk -v name="$log_name" '{ printf "%s: image size %.1f MiB\n", name, $1 / 1048576 }' >&2
}

# --- where the clusters live --------------------------------------------------

# cluster_place PREFIX: a /24 no docker network uses yet, and free loopback
# ports (base+1..base+6: five members and one joining), so a run never collides with a cluster someone is running (or a
# parallel test); sets subnet, base (m<i> is on 127.0.0.1:base+i), run_id,
# project3, project5, compose3, compose5 and work (a temporary dir).
cluster_place() {
    local used_subnets n candidate i
    used_subnets=$(docker network inspect $(docker network ls -q) \
        --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null | tr ' ' '\n')
    subnet=""
    for n in $(seq 100 199); do
        if ! grep -q "^172\.28\.$n\.\|^172\.28\.0\.0/16" <<<"$used_subnets"; then
            subnet=172.28.$n
            break
        fi
    done
    [ -n "$subnet" ] || die "no free 172.28.x.0/24 subnet"
    base=""
    for candidate in 23790 33790 34790 35790 36790 37790; do
        if port_free $((candidate + 1)) && port_free $((candidate + 2)) && port_free $((candidate + 3)) &&
            port_free $((candidate + 4)) && port_free $((candidate + 5)) && port_free $((candidate + 6)); then
            base=$candidate
            break
        fi
    done
    [ -n "$base" ] || die "no free block of loopback ports"
    export MUSTER_SUBNET=$subnet
    for i in 1 2 3 4 5; do export "MUSTER_PORT_M$i=$((base + i))"; done

    run_id="$$-$(date +%s)"
    project3="${1}3-$run_id"
    project5="${1}5-$run_id"
    export MUSTER_CLUSTER_TOKEN="$1-$run_id"
    compose3=("${compose[@]}" -p "$project3" -f docker-compose.yml)
    compose5=("${compose[@]}" -p "$project5" -f docker-compose.yml -f docker-compose.5.yml)
    work=$(mktemp -d)
}
port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# endpoints N [SKIP-MEMBER]: host:port of m1..mN, comma-separated.
endpoints() {
    local i eps=()
    for ((i = 1; i <= $1; i++)); do
        [ "m$i" = "${2:-}" ] || eps+=("127.0.0.1:$((base + i))")
    done
    (IFS=,; echo "${eps[*]}")
}
# member_ip MEMBER: its address on the project network (m1 is .11).
member_ip() { echo "$subnet.1${1#m}"; }

# --- compose -------------------------------------------------------------------

active=()            # the sizes whose project is up (cluster_down removes them)
declare -A cids=()   # "SIZE mI" -> container ID, filled by cluster_up

# dc 3|5 ARGS...: compose for the 3- or the 5-member project, bounded.
dc() {
    local size=$1
    shift
    if [ "$size" = 3 ]; then
        timeout "$(limit 180)" "${compose3[@]}" "$@"
    else
        timeout "$(limit 180)" "${compose5[@]}" "$@"
    fi
}
# dc_quiet 3|5 ARGS...: dc, its output shown only when it does not succeed.
dc_quiet() {
    dc "$@" >"$work/compose.out" 2>&1 || { cat "$work/compose.out" >&2; return 1; }
}

# container_id SIZE MEMBER: the member's container in the SIZE project.
container_id() {
    if [ -n "${cids["$1 $2"]:-}" ]; then
        echo "${cids["$1 $2"]}"
    else
        dc "$1" ps -q "$2" 2>/dev/null
    fi
}

# cluster_up SIZE LIMIT_S: starts the SIZE-member project and waits (up to
# LIMIT_S) until it is ready.
cluster_up() {
    local size=$1 i start
    active+=("$size")
    start=$(now_ms)
    dc_quiet "$size" up -d || die "compose up of the $size-member cluster did not succeed"
    for ((i = 1; i <= size; i++)); do
        cids["$size m$i"]=$(dc "$size" ps -q "m$i") && [ -n "${cids["$size m$i"]}" ] ||
            die "no container for m$i of the $size-member cluster"
    done
    wait_ready "$size" "$2" "$size-member start"
    say "time from 'up' to ready: $(secs $(($(now_ms) - start))) s"
}

# cluster_down SIZE RC: the project's logs when RC is not 0 (or
# MUSTER_KEEP_LOGS=1), then `down -v`. Never fails.
cluster_down() {
    local size=$1 rc=$2 s rest=()
    if [ "$rc" -ne 0 ] || [ "${MUSTER_KEEP_LOGS:-0}" = 1 ]; then
        say "logs of the $size-member cluster (last 40 lines per member):"
        dc "$size" logs --no-color --tail 40 >&2 || true
    fi
    dc "$size" down -v --remove-orphans -t 10 >/dev/null 2>&1 ||
        say "WARNING: down -v of the $size-member cluster did not finish"
    for s in "${active[@]}"; do [ "$s" = "$size" ] || rest+=("$s"); done
    active=("${rest[@]}")
}

ctl() { timeout "$(limit 15)" etcdctl --dial-timeout=2s --command-timeout=5s "$@"; }

# --- health and leader -----------------------------------------------------------

# leader_of ENDPOINTS N: the N comma-separated endpoints all answer status
# and health, all report the same leader, and that leader is one of them.
# Prints the leader's name (m<i>, from its endpoint's port).
leader_of() {
    local eps=$1 n=$2 status health leaders ids
    status=$(ctl --endpoints "$eps" endpoint status -w json 2>/dev/null) || return 1
    health=$(ctl --endpoints "$eps" endpoint health 2>&1) || return 1
    [ "$(grep -c "is healthy" <<<"$health")" -eq "$n" ] || return 1
    # IDs are 64-bit: compare them as text (jq would round them to doubles).
    ids=$(grep -o '"member_id":[0-9]*' <<<"$status" | cut -d: -f2 | sort -u)
    leaders=$(grep -o '"leader":[0-9]*' <<<"$status" | cut -d: -f2 | sort -u)
    [ "$(wc -l <<<"$ids")" -eq "$n" ] || return 1
    [ "$(wc -l <<<"$leaders")" -eq 1 ] && [ "$leaders" != 0 ] || return 1
    grep -qx "$leaders" <<<"$ids" || return 1
    sed 's/{"Endpoint"/\n&/g' <<<"$status" | grep "\"member_id\":$leaders," |
        grep -o '"Endpoint":"127.0.0.1:[0-9]*' | awk -F: -v base="$base" '{ print "m" $3 - base }'
}

# cluster_ready N: every member of the N-member project running (and
# healthy if the image has a healthcheck), and leader_of all of them.
# Prints the leader's name.
cluster_ready() {
    local n=$1 i status container
    for ((i = 1; i <= n; i++)); do
        container=$(container_id "$n" "m$i") || return 1
        [ -n "$container" ] || return 1
        status=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \
            "$container" 2>/dev/null) || return 1
        case $status in "running healthy" | "running none") ;; *) return 1 ;; esac
    done
    leader_of "$(endpoints "$n")" "$n"
}

# wait_ready N LIMIT_S WHAT [soft]: bounded wait for cluster_ready; sets
# LEADER. Says when it is ready (nothing when WHAT is empty); when it is not
# within LIMIT_S, fails the script, or returns 1 when called with `soft`.
wait_ready() {
    local n=$1 lim=$2 what=$3 start
    start=$(now_ms)
    while (($(now_ms) - start < lim * 1000)); do
        if LEADER=$(cluster_ready "$n"); then
            [ -z "$what" ] ||
                say "$what: $n members healthy, one leader ($LEADER), after $(secs $(($(now_ms) - start))) s"
            return 0
        fi
        sleep 1
    done
    ctl --endpoints "$(endpoints "$n")" endpoint status -w table >&2 || true
    [ "${4:-}" = soft ] || die "$what: the $n-member cluster was not ready within $lim s"
    say "${what:-wait}: the $n-member cluster was not ready within $lim s"
    return 1
}

# --- an etcdctl background writer ------------------------------------------------

# put_retrying N KEY VALUE [SKIP]: one write, tried through the live members
# of m1..mN (each endpoint in turn from a random one, skipping SKIP) for up
# to 10 s. Prints the attempts.
put_retrying() {
    local n=$1 key=$2 value=$3 skip=${4:-} start attempts=0 eps ep r
    start=$(now_ms)
    while (($(now_ms) - start < 10000)); do
        IFS=, read -ra eps <<<"$(endpoints "$n" "$skip")"
        r=$((RANDOM % ${#eps[@]}))
        eps=("${eps[@]:r}" "${eps[@]:0:r}")
        for ep in "${eps[@]}"; do
            attempts=$((attempts + 1))
            if timeout 5 etcdctl --endpoints "$ep" --dial-timeout=1s --command-timeout=3s \
                put "$key" "$value" >/dev/null 2>&1; then
                echo "$attempts"
                return 0
            fi
            (($(now_ms) - start < 10000)) || break
        done
        sleep 0.2
    done
    return 1
}

# writer N PREFIX: sequential writes of PREFIX<i> to m1..mN until $work/stop
# exists (bounded by 20 minutes), each starting at a random endpoint so
# every member serves writes, skipping the member named in $work/down.
# Appends "phase key value latency_ms attempts" to $work/acked for
# acknowledged writes and "phase key value" to $work/gaveup for writes that
# gave up after 10 s; the phase is what $work/phase holds.
writer() {
    local n=$1 prefix=$2 i=0 key value start attempts phase skip stop_at
    stop_at=$(($(now_ms) + 1200000))
    while [ ! -e "$work/stop" ] && (($(now_ms) < stop_at)); do
        i=$((i + 1))
        key=$(printf '%s%06d' "$prefix" "$i")
        value="w$i-$run_id"
        phase=$(cat "$work/phase")
        skip=$(cat "$work/down" 2>/dev/null || true)
        start=$(now_ms)
        if attempts=$(put_retrying "$n" "$key" "$value" "$skip"); then
            echo "$phase $key $value $(($(now_ms) - start)) $attempts" >>"$work/acked"
        else
            echo "$phase $key $value" >>"$work/gaveup"
        fi
    done
}

# check_acked N PREFIX: every write in $work/acked is readable, with its
# value, on each of m1..mN. A member may hold more than was acknowledged (a
# write whose answer was lost, or the one in flight at the stop).
check_acked() {
    local n=$1 prefix=$2 i lost
    awk '{ print $2 "\t" $3 }' "$work/acked" | sort >"$work/expected-pairs"
    for ((i = 1; i <= n; i++)); do
        ctl --endpoints "127.0.0.1:$((base + i))" get --prefix "$prefix" >"$work/got" ||
            die "reading the writes back from m$i"
        paste - - <"$work/got" | sort >"$work/got-pairs"
        lost=$(comm -23 "$work/expected-pairs" "$work/got-pairs" | wc -l)
        ((lost == 0)) ||
            die "m$i lacks $lost acknowledged writes, e.g. $(comm -23 "$work/expected-pairs" "$work/got-pairs" | head -3 | tr '\n' ';')"
    done
}
