#!/usr/bin/env bash
# End-to-end test of muster's container image and compose files:
#
#   1. builds muster:dev (scripts/build-image.sh; MUSTER_REUSE_IMAGE=1 reuses
#      an existing image instead)
#   2. starts the 3-member cluster (docker-compose.yml) under a unique
#      project name, and waits until every member is healthy and all agree
#      on exactly one leader (etcdctl endpoint status / endpoint health
#      against the ports published on 127.0.0.1)
#   3. writes keys, then restarts m1, m2, m3 one at a time, waiting after
#      each until the cluster is healthy again and the restarted member has
#      caught up, while a background writer keeps writing through the live
#      members (each write retried for up to 10 s)
#   4. checks that every acknowledged write is readable on every member and
#      that no write gave up
#   5. starts the 5-member variant (docker-compose.5.yml) and runs the same
#      health and leader check
#
# Every wait is bounded; the clusters are always removed with their volumes
# (`down -v`), also on failure or Ctrl-C. Traffic goes only to 127.0.0.1 and
# the project's own docker network. Needs a docker engine; installs Debian's
# docker-compose, etcd-client (etcdctl) and jq when missing and run as root.
#
# Environment: MUSTER_IMAGE (default muster:dev), MUSTER_REUSE_IMAGE=1,
# MUSTER_KEEP_LOGS=1 (print member logs even on success).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "compose-test: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }

# --- tools --------------------------------------------------------------

missing=()
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v jq >/dev/null || missing+=(jq)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    missing+=(docker-compose)
fi
if ((${#missing[@]})); then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]} (install them, or run as root)"
    say "installing ${missing[*]}"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
timeout 20 docker info >/dev/null 2>&1 || die "no docker engine answers"

export MUSTER_IMAGE=${MUSTER_IMAGE:-muster:dev}
if [ "${MUSTER_REUSE_IMAGE:-0}" = 1 ] && docker image inspect "$MUSTER_IMAGE" >/dev/null 2>&1; then
    say "reusing image $MUSTER_IMAGE"
else
    bash scripts/build-image.sh
fi
docker image inspect "$MUSTER_IMAGE" --format '{{.Size}}' |
    awk '{ printf "compose-test: image size %.1f MiB\n", $1 / 1048576 }' >&2

# --- where the clusters live ---------------------------------------------

# A /24 no docker network uses yet, and free loopback ports, so the test
# never collides with a cluster someone is running (or a parallel test).
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
port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
base=""
for candidate in 23790 33790 34790 35790 36790 37790; do
    if port_free $((candidate + 1)) && port_free $((candidate + 2)) && port_free $((candidate + 3)) &&
        port_free $((candidate + 4)) && port_free $((candidate + 5)); then
        base=$candidate
        break
    fi
done
[ -n "$base" ] || die "no free block of loopback ports"
export MUSTER_SUBNET=$subnet
for i in 1 2 3 4 5; do export "MUSTER_PORT_M$i=$((base + i))"; done
endpoints() { # endpoints N [skip-member]: host:port of m1..mN, comma-separated
    local i out=()
    for ((i = 1; i <= $1; i++)); do
        [ "m$i" = "${2:-}" ] || out+=("127.0.0.1:$((base + i))")
    done
    (IFS=,; echo "${out[*]}")
}

run_id="$$-$(date +%s)"
project3="mustertest3-$run_id"
project5="mustertest5-$run_id"
export MUSTER_CLUSTER_TOKEN="compose-test-$run_id"
compose3=("${compose[@]}" -p "$project3" -f docker-compose.yml)
compose5=("${compose[@]}" -p "$project5" -f docker-compose.yml -f docker-compose.5.yml)
work=$(mktemp -d)
writer_pid=""
active=()

# dc 3|5 ARGS...: compose for the 3- or the 5-member project, bounded.
dc() {
    local size=$1
    shift
    if [ "$size" = 3 ]; then
        timeout 180 "${compose3[@]}" "$@"
    else
        timeout 180 "${compose5[@]}" "$@"
    fi
}
# dc_quiet 3|5 ARGS...: dc, its output shown only when it does not succeed.
dc_quiet() {
    dc "$@" >"$work/compose.out" 2>&1 || { cat "$work/compose.out" >&2; return 1; }
}
# set_file FILE TEXT: replaces FILE at once (the writer reads it concurrently).
set_file() { echo "$2" >"$1.new" && mv "$1.new" "$1"; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

teardown() {
    local rc=$? size
    trap - EXIT INT TERM
    [ -z "$writer_pid" ] || kill "$writer_pid" 2>/dev/null || true
    for size in "${active[@]}"; do
        if [ "$rc" -ne 0 ] || [ "${MUSTER_KEEP_LOGS:-0}" = 1 ]; then
            say "logs of the $size-member cluster (last 40 lines per member):"
            dc "$size" logs --no-color --tail 40 >&2 || true
        fi
        dc "$size" down -v --remove-orphans -t 10 >/dev/null 2>&1 ||
            say "WARNING: down -v of the $size-member cluster did not finish"
    done
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then say "OK"; else say "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

ctl() { timeout 15 etcdctl --dial-timeout=2s --command-timeout=5s "$@"; }

# --- health and leader ---------------------------------------------------

# cluster_ready N: every member of the N-member project running (and
# healthy if the image has a healthcheck), every endpoint answers status and
# health, all report the same leader, and that leader is one of them.
# Prints the leader's name.
cluster_ready() {
    local n=$1 i status health leaders ids container
    for ((i = 1; i <= n; i++)); do
        container=$(dc "$n" ps -q "m$i" 2>/dev/null) || return 1
        [ -n "$container" ] || return 1
        status=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \
            "$container" 2>/dev/null) || return 1
        case $status in "running healthy" | "running none") ;; *) return 1 ;; esac
    done
    status=$(ctl --endpoints "$(endpoints "$n")" endpoint status -w json 2>/dev/null) || return 1
    health=$(ctl --endpoints "$(endpoints "$n")" endpoint health 2>&1) || return 1
    [ "$(grep -c "is healthy" <<<"$health")" -eq "$n" ] || return 1
    # IDs are 64-bit: compare them as text (jq would round them to doubles).
    ids=$(grep -o '"member_id":[0-9]*' <<<"$status" | cut -d: -f2 | sort -u)
    leaders=$(grep -o '"leader":[0-9]*' <<<"$status" | cut -d: -f2 | sort -u)
    [ "$(wc -l <<<"$ids")" -eq "$n" ] || return 1
    [ "$(wc -l <<<"$leaders")" -eq 1 ] && [ "$leaders" != 0 ] || return 1
    grep -qx "$leaders" <<<"$ids" || return 1
    # The leader's name, from the port of the endpoint whose member it is.
    sed 's/{"Endpoint"/\n&/g' <<<"$status" | grep "\"member_id\":$leaders," |
        grep -o '"Endpoint":"127.0.0.1:[0-9]*' | awk -F: -v base="$base" '{ print "m" $3 - base }'
}

# wait_ready N LIMIT_S WHAT: bounded wait for cluster_ready.
wait_ready() {
    local n=$1 limit=$2 what=$3 start leader
    start=$(now_ms)
    while (($(now_ms) - start < limit * 1000)); do
        if leader=$(cluster_ready "$n"); then
            say "$what: $n members healthy, one leader ($leader), after $(secs $(($(now_ms) - start))) s"
            return 0
        fi
        sleep 1
    done
    ctl --endpoints "$(endpoints "$n")" endpoint status -w table >&2 || true
    die "$what: the $n-member cluster was not ready within $limit s"
}

# put_retrying KEY VALUE [SKIP]: one write, tried through the live members
# (each endpoint in turn, skipping SKIP) for up to 10 s. Prints the attempts.
put_retrying() {
    local key=$1 value=$2 skip=${3:-} start attempts=0 eps ep
    start=$(now_ms)
    while (($(now_ms) - start < 10000)); do
        IFS=, read -ra eps <<<"$(endpoints 3 "$skip")"
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

# The background writer: sequential writes until told to stop (bounded by
# 15 minutes), rotating the first endpoint it tries so every member serves
# writes, skipping the member being restarted (named in $work/down). Logs
# "phase key value latency_ms attempts" for acknowledged writes and
# "phase key value" for writes that gave up after 10 s.
writer() {
    local i=0 key value start attempts phase skip stop_at
    stop_at=$(($(now_ms) + 900000))
    while [ ! -e "$work/stop" ] && (($(now_ms) < stop_at)); do
        i=$((i + 1))
        key=$(printf '/compose-test/rolling/%06d' "$i")
        value="w$i-$run_id"
        phase=$(cat "$work/phase")
        skip=$(cat "$work/down" 2>/dev/null || true)
        start=$(now_ms)
        if attempts=$(put_retrying "$key" "$value" "$skip"); then
            echo "$phase $key $value $(($(now_ms) - start)) $attempts" >>"$work/acked"
        else
            echo "$phase $key $value" >>"$work/gaveup"
        fi
    done
}

# caught_up MEMBER REVISION: a serializable read on MEMBER alone sees
# REVISION (it has applied at least that far).
caught_up() {
    local rev
    rev=$(ctl --endpoints "127.0.0.1:$((base + ${1#m}))" get --consistency=s -w json /compose-test/marker 2>/dev/null |
        jq -r '.header.revision // 0') || return 1
    [ "${rev:-0}" -ge "$2" ]
}

# --- the 3-member cluster: start, write, rolling restart ------------------

say "3 members: project $project3, subnet $subnet.0/24, client ports 127.0.0.1:$((base + 1))-$((base + 3)), ${compose[*]}"
active+=(3)
start=$(now_ms)
dc_quiet 3 up -d || die "compose up of the 3-member cluster did not succeed"
wait_ready 3 120 "3-member start"
say "time from 'up' to ready: $(secs $(($(now_ms) - start))) s"

# musterctl, from inside the image, over the three members' own addresses:
# one table row per member and exactly one leader.
members3="http://$subnet.11:2379,http://$subnet.12:2379,http://$subnet.13:2379"
table=$(dc 3 exec -T m1 \
    /musterctl --endpoints "$members3" endpoint status -w table) ||
    die "musterctl endpoint status -w table failed inside m1"
echo "$table" >&2
rows=$(awk -F'|' '$2 ~ /http:/' <<<"$table" | wc -l)
leaders=$(awk -F'|' '$2 ~ /http:/ { gsub(/ /, "", $6); if ($6 == "true") n++ } END { print n + 0 }' <<<"$table")
[ "$rows" -eq 3 ] && [ "$leaders" -eq 1 ] ||
    die "musterctl endpoint status: $rows rows and $leaders leaders, expected 3 and 1"

for i in $(seq 1 100); do
    put_retrying "/compose-test/before/$(printf %03d "$i")" "b$i" >/dev/null ||
        die "write $i before the restarts did not succeed"
done
say "100 keys written before the restarts"

set_file "$work/phase" start
: >"$work/acked"
writer &
writer_pid=$!
sleep 3

for member in m1 m2 m3; do
    set_file "$work/phase" "$member"
    set_file "$work/down" "$member"
    t0=$(now_ms)
    dc_quiet 3 restart -t 20 "$member" || die "restarting $member did not succeed"
    say "restarted $member: stopped and started in $(secs $(($(now_ms) - t0))) s"
    rm -f "$work/down"
    wait_ready 3 90 "after restarting $member"
    # Caught up: a marker written through the others is visible on the
    # restarted member's own (serializable) state.
    put_retrying /compose-test/marker "after-$member" "$member" >/dev/null || die "marker write after $member"
    marker_rev=$(ctl --endpoints "$(endpoints 3 "$member")" get -w json /compose-test/marker | jq -r '.header.revision')
    deadline=$(($(now_ms) + 60000))
    until caught_up "$member" "$marker_rev"; do
        (($(now_ms) < deadline)) || die "$member did not catch up to revision $marker_rev within 60 s"
        sleep 0.5
    done
    say "$member caught up to revision $marker_rev, $(secs $(($(now_ms) - t0))) s after its restart began"
    sleep 3
done
set_file "$work/phase" end
sleep 3
touch "$work/stop"
wait "$writer_pid" || true
writer_pid=""

# --- what the writer saw ---------------------------------------------------

acked=$(wc -l <"$work/acked")
gaveup=0
[ ! -e "$work/gaveup" ] || gaveup=$(wc -l <"$work/gaveup")
for phase in start m1 m2 m3 end; do
    awk -v p="$phase" '$1 == p { n++; r += $5 - 1; if ($4 > m) m = $4 }
        END { printf "compose-test: writes during %-5s %4d acknowledged, %3d retried attempts, slowest %5d ms\n", p, n, r, m }' \
        "$work/acked" >&2
done
((gaveup == 0)) || die "$gaveup writes gave up after 10 s of retries: $(head -3 "$work/gaveup" | tr '\n' ';')"
for phase in m1 m2 m3; do
    awk -v p="$phase" '$1 == p { n++ } END { exit n > 0 ? 0 : 1 }' "$work/acked" ||
        die "no write was acknowledged while $phase restarted"
done

# Every acknowledged write, and the keys written before, on every member.
awk '{ print $2 "\t" $3 }' "$work/acked" | sort >"$work/expected-pairs"
for i in $(seq 1 100); do printf '/compose-test/before/%03d\nb%d\n' "$i" "$i"; done >"$work/expected-before"
for i in 1 2 3; do
    ep="127.0.0.1:$((base + i))"
    ctl --endpoints "$ep" get --prefix /compose-test/rolling/ >"$work/got-rolling" ||
        die "reading the writes back from m$i"
    ctl --endpoints "$ep" get --prefix /compose-test/before/ >"$work/got-before" ||
        die "reading the first keys back from m$i"
    cmp -s "$work/expected-before" "$work/got-before" || die "m$i does not hold the 100 keys written before the restarts"
    # A member may hold more than was acknowledged (a write whose answer
    # was lost, or the one in flight at the stop); it must hold every
    # acknowledged one, with its value.
    paste - - <"$work/got-rolling" | sort >"$work/got-pairs"
    lost=$(comm -23 "$work/expected-pairs" "$work/got-pairs" | wc -l)
    ((lost == 0)) || die "m$i lacks $lost acknowledged writes, e.g. $(comm -23 "$work/expected-pairs" "$work/got-pairs" | head -3 | tr '\n' ';')"
done
say "rolling restart: $acked writes acknowledged, every one readable on m1, m2 and m3; none gave up"

dc_quiet 3 down -v --remove-orphans -t 10 || die "down -v of the 3-member cluster"
active=()

# --- the 5-member variant ---------------------------------------------------

say "5 members: project $project5, client ports 127.0.0.1:$((base + 1))-$((base + 5))"
active+=(5)
start=$(now_ms)
dc_quiet 5 up -d || die "compose up of the 5-member cluster did not succeed"
wait_ready 5 150 "5-member start"
say "time from 'up' to ready: $(secs $(($(now_ms) - start))) s"
ctl --endpoints "127.0.0.1:$((base + 1))" put /compose-test/five ok >/dev/null || die "write to the 5-member cluster"
for i in 1 2 3 4 5; do
    [ "$(ctl --endpoints "127.0.0.1:$((base + i))" get --print-value-only /compose-test/five)" = ok ] ||
        die "m$i of the 5-member cluster does not read the write"
done
members=$(ctl --endpoints "127.0.0.1:$((base + 1))" member list | wc -l)
((members == 5)) || die "member list shows $members members, not 5"
say "5-member cluster: one leader, member list of 5, a write readable on all five"
