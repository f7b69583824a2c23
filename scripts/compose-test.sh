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

log_name="compose-test"
source scripts/lib/cluster.sh

cluster_tools
cluster_image
cluster_place mustertest
writer_pid=""

teardown() {
    local rc=$? size
    trap - EXIT INT TERM
    [ -z "$writer_pid" ] || kill "$writer_pid" 2>/dev/null || true
    for size in "${active[@]}"; do cluster_down "$size" "$rc"; done
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then say "OK"; else say "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

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
cluster_up 3 120

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
    put_retrying 3 "/compose-test/before/$(printf %03d "$i")" "b$i" >/dev/null ||
        die "write $i before the restarts did not succeed"
done
say "100 keys written before the restarts"

set_file "$work/phase" start
: >"$work/acked"
writer 3 /compose-test/rolling/ &
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
    put_retrying 3 /compose-test/marker "after-$member" "$member" >/dev/null || die "marker write after $member"
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
check_acked 3 /compose-test/rolling/
for i in $(seq 1 100); do printf '/compose-test/before/%03d\nb%d\n' "$i" "$i"; done >"$work/expected-before"
for i in 1 2 3; do
    ctl --endpoints "127.0.0.1:$((base + i))" get --prefix /compose-test/before/ >"$work/got-before" ||
        die "reading the first keys back from m$i"
    cmp -s "$work/expected-before" "$work/got-before" || die "m$i does not hold the 100 keys written before the restarts"
done
say "rolling restart: $acked writes acknowledged, every one readable on m1, m2 and m3; none gave up"

dc_quiet 3 down -v --remove-orphans -t 10 || die "down -v of the 3-member cluster"
active=()

# --- the 5-member variant ---------------------------------------------------

say "5 members: project $project5, client ports 127.0.0.1:$((base + 1))-$((base + 5))"
cluster_up 5 150
ctl --endpoints "127.0.0.1:$((base + 1))" put /compose-test/five ok >/dev/null || die "write to the 5-member cluster"
for i in 1 2 3 4 5; do
    [ "$(ctl --endpoints "127.0.0.1:$((base + i))" get --print-value-only /compose-test/five)" = ok ] ||
        die "m$i of the 5-member cluster does not read the write"
done
members=$(ctl --endpoints "127.0.0.1:$((base + 1))" member list | wc -l)
((members == 5)) || die "member list shows $members members, not 5"
say "5-member cluster: one leader, member list of 5, a write readable on all five"
