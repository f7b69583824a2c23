#!/usr/bin/env bash
# The fault suite: muster's compose clusters under a recording workload while
# faults are injected one after another, then the checker on the history.
#
#   bash scripts/fault-test.sh [OPTIONS]
#
# For each cluster size (3 members: docker-compose.yml; 5 members:
# docker-compose.5.yml layered on it) it
#   1. starts the cluster under a unique project name (a free 172.28.x.0/24
#      and free loopback ports) and waits until every member is healthy and
#      all agree on one leader;
#   2. starts target/release/muster-workload in the background against every
#      member's published client port, for a duration computed from the
#      selected faults' time budgets (the workload has no other way to be
#      stopped early); it then reads every member in its final phase and
#      writes the history;
#   3. injects the faults one after another: inject, hold for --hold
#      seconds, heal, then a bounded wait until the cluster has settled
#      (every member healthy, all agree on one leader) and a short quiet
#      gap; records each start and heal (and notes) in the fault file and
#      prints one line per fault with its timings;
#   4. waits for the workload and runs
#      `muster-check HISTORY --faults FAULTS`;
#   5. removes the cluster: iptables rules, paused containers unpaused, the
#      extra member's container, then `down -v`. The same cleanup runs on
#      failure, on Ctrl-C and when the deadline passes.
# Exits 0 when every check found no anomaly; non-zero when the checker
# reports anomalies (1) or cannot read a history (2), or anything else fails
# (a cluster does not settle within its bound, the workload fails, a fault
# could not be injected, the deadline passes). With --break the verdict is
# inverted: exit 0 only when the checker reported anomalies for every size.
#
# Faults against the 3-member cluster (one workload run, in this order):
#   isolate-leader      the leader drops all traffic from and to the other
#                       members (iptables INPUT -s / OUTPUT -d in its network
#                       namespace); clients, coming through the bridge
#                       gateway, still reach it
#   one-way-loss        the leader drops packets from one follower (INPUT
#                       only): the follower hears heartbeats, its answers are lost
#   pause-member        `docker pause` a follower (hung, connections open)
#   pause-leader        `docker pause` the leader for --hold seconds (longer
#                       than the 1 s election timeout): a new leader is elected
#   kill-member         `docker kill -s KILL` a follower, then `docker start`
#   kill-leader         the same for the leader
#   kill-all            every member killed, then all started
#   rolling-restart     `docker restart -t 10` each member in turn, waiting
#                       for readiness between (no hold)
#   membership-change   `member add mN --learner` (N = size + 1), a container
#                       started by `docker run` on the project network
#                       (existing cluster), `member promote` once it has
#                       caught up, `member remove`, its container removed
# Faults against the 5-member cluster (a second workload run, own history):
#   cut-minority        two followers | the leader and the other two, both
#                       directions: the leader keeps its majority
#   cut-majority        {leader, a follower} | {the other 3}: the majority
#                       elects a new leader, the old one is cut off
#   no-quorum           the leader and two followers each isolated from
#                       everyone, the last two together: no majority anywhere
# With --duration the 5-member cluster gets every 3-member fault as well.
#
# Options:
#   --duration D          the long suite: D (e.g. 30m, 1h, 900s) shared
#                         equally by the cluster sizes; each runs its faults
#                         round after round, for as long as the next one
#                         fits, under one workload lasting its share
#   --short               the CI suite: 3 members, isolate-leader,
#                         one-way-loss, pause-leader, kill-leader, --hold 4
#                         (about three minutes after the builds)
#   --break               the deliberate-breakage check: builds the test
#                         image muster:faulty (cargo feature fault-injection)
#                         and starts every member with
#                         MUSTER_FAULT_STALE_FOLLOWER_READS=1, so followers
#                         answer linearizable reads from local state. Passes
#                         only when the checker reports anomalies. Goes
#                         with --short or any other selection.
#   --only NAME[,NAME]    run only these faults (names above)
#   --size 3|5|both       which clusters (default both)
#   --hold SECONDS        how long a fault is held (default 8, at least 2)
#   --out DIR             where the files go (kept); default a new temporary
#                         dir, printed, removed on success unless --keep
#   --keep                keep the default temporary dir on success too
#   --deadline SECONDS    bound on the whole run after the builds (default
#                         1200; with --duration D, D + 900 per cluster size)
#   --seed N              the workload's seed (default random, printed)
#   --workload-args ARGS  more muster-workload options, e.g.
#                         "--clients 8 --keys 16 --watchers 2"
#   --workload etcdctl    instead of muster-workload and muster-check: a
#                         background etcdctl writer; every acknowledged write
#                         must be on every member at the end (exercises the
#                         fault machinery without the Rust workload)
#
# Files in the output dir, for each size N that ran:
#   history-N.jsonl   the workload's history
#   faults-N.jsonl    one line per fault record:
#                     {"record":"fault","wall_ns":..,"fault":"isolate-leader",
#                      "phase":"start"|"heal"|"settled"|"note",
#                      "detail":"m2 from m1 m3"}
#   workload-N.log    the workload's output;  check-N.txt  the checker's
#   timings-N.txt     the per-fault timing lines;  logs-N.txt  member logs
#   acked-N.txt, gaveup-N.txt   (--workload etcdctl) the writer's log
#   build.log         cargo's output
#
# Needs root (iptables inside the containers' network namespaces through
# nsenter), a docker engine, and the image (built by scripts/build-image.sh;
# MUSTER_REUSE_IMAGE=1 reuses muster:dev). Installs Debian's docker-compose,
# etcd-client and jq when missing. Traffic goes only to 127.0.0.1 and the
# project's own docker network. Every wait is bounded; cargo by
# MUSTER_BUILD_TIMEOUT (default 1800 s), the rest by --deadline.
# Environment: MUSTER_IMAGE, MUSTER_REUSE_IMAGE=1, MUSTER_BUILD_TIMEOUT,
# MUSTER_KEEP_LOGS=1 (print member logs on success too), MUSTER_WORKLOAD_BIN
# and MUSTER_CHECK_BIN (use these binaries instead of building the release
# ones; both set: no cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."

log_name="fault-test"
source scripts/lib/cluster.sh

faults3=(isolate-leader one-way-loss pause-member pause-leader kill-member kill-leader kill-all
    rolling-restart membership-change)
faults5=(cut-minority cut-majority no-quorum)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

only="" sizes="3 5" hold="" out="" keep=0 deadline="" seed="" workload_args="" mode=muster
total="" short=0 breakage=0
# seconds D: D (90, 90s, 30m, 1h) in seconds.
seconds() {
    case $1 in
    *[0-9]h) echo $((${1%h} * 3600)) ;;
    *[0-9]m) echo $((${1%m} * 60)) ;;
    *[0-9]s) echo "${1%s}" ;;
    *) echo "$1" ;;
    esac
}
while (($#)); do
    case $1 in
    --only) only=${2:?}; shift ;;
    --size)
        case ${2:-} in 3 | 5) sizes=$2 ;; both) sizes="3 5" ;; *) die "--size 3|5|both" ;; esac
        shift ;;
    --hold) hold=${2:?}; shift ;;
    --duration)
        [[ ${2:-} =~ ^[0-9]+[smh]?$ ]] || die "--duration takes a time like 30m, 1h or 600s"
        total=$(seconds "$2")
        shift ;;
    --short) short=1 ;;
    --break) breakage=1 ;;
    --out) out=${2:?}; shift ;;
    --keep) keep=1 ;;
    --deadline) deadline=${2:?}; shift ;;
    --seed) seed=${2:?}; shift ;;
    --workload-args) workload_args=${2?}; shift ;;
    --workload)
        case ${2:-} in muster | etcdctl) mode=$2 ;; *) die "--workload muster|etcdctl" ;; esac
        shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
if ((short)); then
    [ -z "$total" ] || die "--short and --duration do not go together"
    [ -n "$only" ] || only=isolate-leader,one-way-loss,pause-leader,kill-leader
    sizes=3
    hold=${hold:-4}
fi
hold=${hold:-8}
if ((breakage)); then
    [ "$mode" = muster ] || die "--break needs the muster workload and checker"
    export MUSTER_IMAGE=${MUSTER_IMAGE:-muster:faulty}
    export MUSTER_IMAGE_FEATURES=fault-injection
fi
[[ $hold =~ ^[0-9]+$ ]] && ((hold >= 2)) || die "--hold must be a whole number of seconds, at least 2"
[ -z "$total" ] || [ "$mode" = muster ] || die "--duration needs the muster workload"
[ -n "$seed" ] || seed=$((RANDOM * 32768 + RANDOM))
[ "$(id -u)" -eq 0 ] || die "needs root: faults are iptables rules entered with nsenter"
for tool in nsenter iptables docker; do command -v "$tool" >/dev/null || die "$tool is required"; done

# selected SIZE: the faults to run against the SIZE-member cluster. With
# --duration the 5-member cluster gets the 3-member faults too.
selected() {
    local -n all="faults$1"
    local f list=("${all[@]}")
    [ -z "$total" ] || [ "$1" != 5 ] || list+=("${faults3[@]}")
    for f in "${list[@]}"; do
        [ -z "$only" ] || [[ ",$only," == *",$f,"* ]] && echo "$f"
    done
    return 0
}
if [ -n "$only" ]; then
    IFS=, read -ra wanted <<<"$only"
    for f in "${wanted[@]}"; do
        [[ " ${faults3[*]} ${faults5[*]} " == *" $f "* ]] || die "unknown fault $f (see --help)"
    done
fi
run_sizes=()
for size in $sizes; do [ -z "$(selected "$size")" ] || run_sizes+=("$size"); done
((${#run_sizes[@]})) || die "no fault selected for --size ${sizes// / and }"
# With --duration, each size gets an equal share of it.
share=""
[ -z "$total" ] || share=$((total / ${#run_sizes[@]}))
if [ -z "$deadline" ]; then
    deadline=1200
    [ -z "$total" ] || deadline=$((total + 900 * ${#run_sizes[@]}))
fi
[[ $deadline =~ ^[0-9]+$ ]] || die "--deadline must be a number of seconds"

# budget FAULT: seconds planned for it (inject, hold, heal, settle, gap),
# about 1.3 times what each took on a loaded 2-core machine. The workload's
# duration is their sum; a fault that overruns eats into the ones after it,
# and one that would not fit before the workload ends is skipped (a failure).
budget() {
    case $1 in
    kill-member | kill-leader) echo $((hold + 14)) ;;
    kill-all) echo $((hold + 20)) ;;
    rolling-restart) echo 45 ;;
    membership-change) echo 30 ;;
    cut-* | no-quorum) echo $((hold + 25)) ;;
    *) echo $((hold + 12)) ;;
    esac
}
lead_in=5 tail_s=10 gap=3

# --- output dir, tools, binaries, image ------------------------------------

if [ -n "$out" ]; then
    mkdir -p "$out"
    keep=1
else
    out=$(mktemp -d /tmp/muster-fault.XXXXXX)
fi
out=$(cd "$out" && pwd)
say "output in $out"
trap 'say "files kept in $out"' EXIT
cluster_tools
if [ "$mode" = muster ]; then
    workload_bin=${MUSTER_WORKLOAD_BIN:-target/release/muster-workload}
    check_bin=${MUSTER_CHECK_BIN:-target/release/muster-check}
    if [ -z "${MUSTER_WORKLOAD_BIN:-}" ] || [ -z "${MUSTER_CHECK_BIN:-}" ]; then
        say "building muster-workload and muster-check (release)"
        if ! timeout "${MUSTER_BUILD_TIMEOUT:-1800}" cargo build --release --locked \
            -p muster-workload -p muster-check >"$out/build.log" 2>&1; then
            grep -m 5 '^error' "$out/build.log" >&2 || tail -5 "$out/build.log" >&2
            die "muster-workload and muster-check do not build (yet): see $out/build.log. To exercise the fault machinery alone, run with --workload etcdctl"
        fi
    fi
    # The stubs build too: make sure the interface is there.
    timeout 10 "$workload_bin" --help 2>&1 | grep -q -- '--history' ||
        die "$workload_bin has no --history option (still a stub?); try --workload etcdctl"
    timeout 10 "$check_bin" --help 2>&1 | grep -q -- '--faults' ||
        die "$check_bin has no --faults option (still a stub?); try --workload etcdctl"
fi
cluster_image
cluster_place musterfault
if ((breakage)); then
    # Every member of both projects with the breakage switch on.
    for n in 3 5; do
        {
            echo "services:"
            for ((i = 1; i <= n; i++)); do
                printf '  m%s:\n    environment:\n      MUSTER_FAULT_STALE_FOLLOWER_READS: "1"\n' "$i"
            done
        } >"$work/break-$n.yml"
    done
    compose3+=(-f "$work/break-3.yml")
    compose5+=(-f "$work/break-5.yml")
    say "BREAKAGE ON: $MUSTER_IMAGE with MUSTER_FAULT_STALE_FOLLOWER_READS=1 (followers answer" \
        "linearizable reads without the read barrier); the checker must report anomalies"
fi

deadline_ms=$(($(now_ms) + deadline * 1000))
failures=()
size="" wl_pid="" xm="" xc="" x_id=""
declare -A ids=() # member ID (decimal, as text) -> name
declare -A ran=() # fault -> how often it ran in this suite

teardown() {
    local rc=$? s
    trap - EXIT INT TERM
    deadline_ms="" # the cleanup gets its own bounds
    [ -z "$watchdog_pid" ] || kill "$watchdog_pid" 2>/dev/null || true
    [ -z "$wl_pid" ] || kill "$wl_pid" 2>/dev/null || true
    [ ! -e "$work/deadline" ] || say "ERROR: the deadline of $deadline s passed"
    for s in "${active[@]}"; do suite_cleanup "$s" "$rc"; done
    rm -rf "$work"
    if [ "$rc" -eq 0 ] && [ "$keep" = 0 ]; then
        rm -rf "$out"
    else
        say "files kept in $out"
    fi
    if [ "$rc" -eq 0 ]; then say "OK"; else say "FAILED (exit $rc)"; fi
    exit "$rc"
}
watchdog_pid=""
trap teardown EXIT
trap 'exit 130' INT TERM
# The deadline: TERM to this script, whose trap cleans up.
(
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$deadline" &
    sleeper=$!
    wait "$sleeper" && touch "$work/deadline" && kill -TERM $$
) </dev/null >/dev/null 2>&1 &
watchdog_pid=$!

# --- members and their network namespaces -----------------------------------

# members [EXCEPT...]: the members of the running cluster, minus EXCEPT.
members() {
    local i
    for ((i = 1; i <= size; i++)); do
        [[ " $* " == *" m$i "* ]] || echo "m$i"
    done
}
cid() { if [ -n "$xc" ] && [ "$1" = "$xm" ]; then echo "$xc"; else container_id "$size" "$1"; fi; }
# project: the compose project of the running cluster.
project() { if [ "$size" = 3 ]; then echo "$project3"; else echo "$project5"; fi; }
dk() { timeout "$(limit 60)" docker "$@" >/dev/null; }

# fw MEMBER IPTABLES-ARGS...: iptables in MEMBER's network namespace.
fw() {
    local pid
    pid=$(docker inspect -f '{{.State.Pid}}' "$(cid "$1")" 2>/dev/null) || return 1
    [ "${pid:-0}" != 0 ] || return 1
    timeout "$(limit 10)" nsenter -t "$pid" -n iptables -w 5 "${@:2}"
}
# fw_drop MEMBER in|out|both PEER...: MEMBER drops packets from (in) and/or
# to (out) each PEER, through the chain muster-fault, jumped to from INPUT
# and OUTPUT (a -s PEER rule never matches in OUTPUT, nor -d PEER in INPUT).
fw_drop() {
    local m=$1 dir=$2 p
    shift 2
    fw "$m" -N muster-fault 2>/dev/null || true
    fw "$m" -C INPUT -j muster-fault 2>/dev/null || fw "$m" -I INPUT 1 -j muster-fault || return 1
    fw "$m" -C OUTPUT -j muster-fault 2>/dev/null || fw "$m" -I OUTPUT 1 -j muster-fault || return 1
    for p in "$@"; do
        [ "$dir" = out ] || fw "$m" -A muster-fault -s "$(member_ip "$p")" -j DROP || return 1
        [ "$dir" = in ] || fw "$m" -A muster-fault -d "$(member_ip "$p")" -j DROP || return 1
    done
}
# fw_clear [MEMBER...]: removes the chain and its jumps (default: every
# member, m4 too). A member that is not running has no rules left.
fw_clear() {
    local m
    (($#)) || set -- $(members) ${xc:+$xm}
    for m in "$@"; do
        fw "$m" -L muster-fault -n >/dev/null 2>&1 || continue
        while fw "$m" -D INPUT -j muster-fault 2>/dev/null; do :; done
        while fw "$m" -D OUTPUT -j muster-fault 2>/dev/null; do :; done
        fw "$m" -F muster-fault && fw "$m" -X muster-fault ||
            say "WARNING: could not remove the iptables rules of $m"
    done
}

# learn_ids ENDPOINTS: remembers the member ID of each endpoint's member.
learn_ids() {
    local line
    while read -r line; do
        [[ $line =~ \"Endpoint\":\"127.0.0.1:([0-9]+)\".*\"member_id\":([0-9]+) ]] &&
            ids[${BASH_REMATCH[2]}]="m$((BASH_REMATCH[1] - base))"
    done < <(ctl --endpoints "$1" endpoint status -w json 2>/dev/null | sed 's/{"Endpoint"/\n&/g')
}
# leaders_seen: "m1:m3 m2:? ...", the leader each member reports (? when it
# does not answer within 2 s, none when it knows no leader).
leaders_seen() {
    local status m port line lid seen=()
    status=$(timeout "$(limit 10)" etcdctl --dial-timeout=1s --command-timeout=2s \
        --endpoints "$(endpoints "$size")" endpoint status -w json 2>/dev/null | sed 's/{"Endpoint"/\n&/g') || true
    for m in $(members); do
        port=$((base + ${m#m}))
        line=$(grep "\"Endpoint\":\"127.0.0.1:$port\"" <<<"$status" || true)
        lid=$(grep -o '"leader":[0-9]*' <<<"$line" | cut -d: -f2 || true)
        if [ -z "$lid" ]; then
            seen+=("$m:?")
        elif [ "$lid" = 0 ]; then
            seen+=("$m:none")
        else
            seen+=("$m:${ids[$lid]:-$lid}")
        fi
    done
    echo "${seen[*]}"
}

# --- fault bookkeeping ----------------------------------------------------------

json_str() { jq -n --arg s "$1" '$s'; }
# record FAULT start|heal|settled|note DETAIL: one line of the fault file.
record() {
    printf '{"record":"fault","wall_ns":%s,"fault":%s,"phase":"%s","detail":%s}\n' \
        "$(date +%s%N)" "$(json_str "$1")" "$2" "$(json_str "$3")" >>"$faults_file"
}
# The steps of a fault: begin DETAIL (records the start), injected, held
# (sleeps --hold, then notes the leader each member reports), healed (the
# heal takes from t_healing to t_heal).
begin() {
    detail=$1 t_begin=$(now_ms) t_inj="" t_held="" seen=""
    record "$fault" start "$detail"
}
injected() { t_inj=$(now_ms); }
held() {
    sleep "$hold"
    t_held=$(now_ms)
    seen=$(leaders_seen)
    record "$fault" note "after the hold, member:leader $seen"
    t_healing=$(now_ms)
}
healed() {
    t_heal=$(now_ms)
    record "$fault" heal "$detail"
}
# timing LINE: one line of the report, also kept in timings-N.txt.
timing() {
    say "$*"
    echo "$*" >>"$out/timings-$size.txt"
}

# settle: bounded wait (90 s) until the cluster agrees on one leader with
# every member answering (recover_ms), and every container is healthy too
# (healthy_ms). Sets LEADER.
settle() {
    local t0 lim=90
    t0=$(now_ms)
    recover_ms=-1 healthy_ms=-1
    until LEADER=$(leader_of "$(endpoints "$size")" "$size"); do
        (($(now_ms) - t0 < lim * 1000)) || return 1
        sleep 0.5
    done
    recover_ms=$(($(now_ms) - t0))
    wait_ready "$size" $((lim - recover_ms / 1000)) "" soft || return 1
    healthy_ms=$(($(now_ms) - t0))
}

# --- the faults ---------------------------------------------------------------------
# Each runs from a settled cluster whose leader is LEADER; settle follows.
# They run as an `if` condition, where `set -e` does not apply: every step
# that can fail says so with `|| return 1`.

fault_isolate_leader() {
    local l=$LEADER peers
    peers=$(members "$l")
    begin "$l from $(echo $peers)"
    fw_drop "$l" both $peers || return 1
    injected
    held
    fw_clear "$l" || return 1
    healed
}

fault_one_way_loss() {
    local l=$LEADER f
    f=$(members "$l" | head -1)
    begin "$l drops packets from $f (inbound only)"
    fw_drop "$l" in "$f" || return 1
    injected
    held
    fw_clear "$l" || return 1
    healed
}

pause() {
    begin "$1"
    dk pause "$(cid "$1")" || return 1
    injected
    held
    dk unpause "$(cid "$1")" || return 1
    healed
}
fault_pause_member() { pause "$(members "$LEADER" | head -1)"; }
fault_pause_leader() { pause "$LEADER"; }

kill_start() {
    local m c=()
    begin "$*"
    for m; do c+=("$(cid "$m")"); done
    dk kill -s KILL "${c[@]}" || return 1
    injected
    held
    dk start "${c[@]}" || return 1
    healed
}
fault_kill_member() { kill_start "$(members "$LEADER" | head -1)"; }
fault_kill_leader() { kill_start "$LEADER"; }
fault_kill_all() { kill_start $(members); }

fault_rolling_restart() {
    local m t0 role restart_ms
    detail="$(echo $(members)) in turn" t_begin=$(now_ms) t_inj="" t_held="" seen=""
    for m in $(members); do
        t0=$(now_ms)
        role=follower
        [ "$m" != "$LEADER" ] || role=leader
        record "$fault" start "$m ($role)"
        set_file "$work/down" "$m"
        dk restart -t 10 "$(cid "$m")" || return 1
        record "$fault" heal "$m ($role)"
        rm -f "$work/down"
        restart_ms=$(($(now_ms) - t0))
        settle || { say "$fault: the cluster did not settle after restarting $m"; return 1; }
        timing "  restart $m ($role): docker restart $(secs "$restart_ms") s," \
            "recovered $(secs "$recover_ms") s, healthy $(secs "$healthy_ms") s, leader $LEADER"
    done
    t_heal=$(now_ms)
}

fault_membership_change() {
    local eps ip peer_urls="" m t0 t_started t_promoted out_add i n=$((size + 1))
    xm=m$n
    eps=$(endpoints "$size")
    ip=$(member_ip "$xm")
    for m in $(members) "$xm"; do peer_urls+="${peer_urls:+,}$m=http://$(member_ip "$m"):2380"; done
    begin "$xm at $ip: add as learner, start, promote, remove"
    t0=$(now_ms)
    out_add=$(ctl --endpoints "$eps" member add "$xm" --learner --peer-urls="http://$ip:2380") ||
        { say "$fault: member add failed"; return 1; }
    x_id=$(grep -o 'Member [0-9a-f]* added' <<<"$out_add" | awk '{ print $2 }')
    [ -n "$x_id" ] || { say "$fault: no member ID in: $out_add"; return 1; }
    injected
    local net
    net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid m1)" | awk '{ print $1 }')
    xc=$(timeout "$(limit 60)" docker run -d --name "$(project)-$xm" --hostname "$xm" \
        --label "muster-fault-test=$run_id" --network "$net" --ip "$ip" \
        -p "127.0.0.1:$((base + n)):2379" --stop-timeout 20 \
        -e "MUSTER_NAME=$xm" -e MUSTER_DATA_DIR=/data \
        -e MUSTER_LISTEN_PEER_URLS=http://0.0.0.0:2380 -e MUSTER_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
        -e MUSTER_LISTEN_METRICS_URLS=http://0.0.0.0:2381 \
        -e "MUSTER_INITIAL_ADVERTISE_PEER_URLS=http://$ip:2380" -e "MUSTER_ADVERTISE_CLIENT_URLS=http://$ip:2379" \
        -e "MUSTER_INITIAL_CLUSTER=$peer_urls" -e MUSTER_INITIAL_CLUSTER_STATE=existing \
        -e "MUSTER_INITIAL_CLUSTER_TOKEN=$MUSTER_CLUSTER_TOKEN" \
        "$MUSTER_IMAGE") || { say "$fault: docker run of $xm failed"; return 1; }
    t_started=$(now_ms)
    record "$fault" note "$xm ($x_id) added as a learner and started"
    # Promotion is refused until the learner is in sync with the leader.
    until ctl --endpoints "$eps" member promote "$x_id" >"$work/promote.out" 2>&1; do
        if (($(now_ms) - t_started > 60000)); then
            say "$fault: $xm was not promoted within 60 s: $(tail -1 "$work/promote.out")"
            return 1
        fi
        sleep 1
    done
    t_promoted=$(now_ms)
    record "$fault" note "$xm promoted"
    # SIZE + 1 voters: all answer and agree on one leader.
    until LEADER=$(leader_of "$(endpoints "$n")" "$n"); do
        if (($(now_ms) - t_promoted > 60000)); then
            say "$fault: the $n members did not agree on a leader within 60 s"
            return 1
        fi
        sleep 1
    done
    learn_ids "$(endpoints "$n")"
    t_held=$(now_ms)
    seen="$n voters, leader $LEADER"
    record "$fault" note "$seen"
    sleep 2
    t_healing=$(now_ms)
    for i in $(seq 1 30); do
        ctl --endpoints "$eps" member remove "$x_id" >"$work/remove.out" 2>&1 && break
        sleep 1
    done
    grep -q removed "$work/remove.out" || { say "$fault: member remove failed: $(cat "$work/remove.out")"; return 1; }
    dk stop -t 10 "$xc" || return 1
    dk rm -v "$xc" || return 1
    xc="" x_id=""
    healed
    [ "$(ctl --endpoints "$eps" member list | wc -l)" -eq "$size" ] ||
        { say "$fault: member list does not show $size members after the removal"; return 1; }
    detail+=" (started $(secs $((t_started - t0))) s after the add, promoted $(secs $((t_promoted - t_started))) s later)"
}

# partition SIDE|SIDE...: every member drops packets from and to the members
# of the other sides (each side a space-separated list).
partition() {
    local side m
    for side; do
        for m in $side; do fw_drop "$m" both $(members $side) || return 1; done
    done
}

fault_cut_minority() {
    local l=$LEADER minority majority
    minority=$(members "$l" | tail -2 | tr '\n' ' ')
    majority=$(members $minority)
    begin "{$(echo $minority)} | {$(echo $majority)}: the leader keeps a majority"
    partition "$minority" "$majority" || return 1
    injected
    held
    fw_clear || return 1
    healed
}

fault_cut_majority() {
    local l=$LEADER minority majority
    minority="$l $(members "$l" | head -1)"
    majority=$(members $minority)
    begin "{$minority} | {$(echo $majority)}: the majority elects a new leader"
    partition "$minority" "$majority" || return 1
    injected
    held
    fw_clear || return 1
    healed
}

fault_no_quorum() {
    local l=$LEADER singles pair m sides=()
    singles="$l $(members "$l" | head -2 | tr '\n' ' ')"
    pair=$(members $singles)
    for m in $singles; do sides+=("$m"); done
    begin "$(for m in $singles; do printf '{%s} ' "$m"; done){$(echo $pair)}: no majority"
    partition "${sides[@]}" "$pair" || return 1
    injected
    held
    fw_clear || return 1
    healed
}

# run_fault NAME: one fault from a settled cluster, then settle; one line.
run_fault() {
    fault=$1
    local t0 budget_s took
    budget_s=$(budget "$fault")
    if [ -n "$wl_pid" ] && [ "$mode" = muster ] && (($(now_ms) + budget_s * 1000 > wl_end_ms)); then
        failures+=("$size: $fault skipped: the workload ends in $(((wl_end_ms - $(now_ms)) / 1000)) s")
        say "SKIPPED $fault: too little workload time left"
        return 0
    fi
    LEADER=$(leader_of "$(endpoints "$size")" "$size") || settle ||
        { failures+=("$size: not settled before $fault"); return 1; }
    [ "$mode" != etcdctl ] || set_file "$work/phase" "$fault"
    t0=$(now_ms)
    if ! "fault_${fault//-/_}"; then
        failures+=("$size: $fault could not be carried out")
        fw_clear
        return 1
    fi
    if ! settle; then
        failures+=("$size: the cluster did not settle within 90 s after $fault")
        return 1
    fi
    # The fault's effects (a rejoining member forcing an election, a
    # restarted member catching up) last until here.
    record "$fault" settled "leader $LEADER"
    took=$(($(now_ms) - t0))
    local steps=""
    if [ -n "$t_inj" ]; then
        steps="inject $(secs $((t_inj - t_begin))) s, "
        [ -z "$t_held" ] || steps+="held $(secs $((t_held - t_inj))) s [$seen], "
        steps+="heal $(secs $((t_heal - t_healing))) s, "
    fi
    timing "$(printf '%-19s' "$fault") $detail: ${steps}recovered $(secs "$recover_ms") s," \
        "healthy $(secs "$healthy_ms") s, leader $LEADER; total $(secs "$took") s of a $budget_s s budget"
    [ "$mode" != etcdctl ] || set_file "$work/phase" "quiet"
    sleep "$gap"
}

# --- one suite: a cluster, the workload, the faults, the check ------------------------

# suite_cleanup SIZE RC: everything the suite of SIZE set up, removed.
suite_cleanup() {
    local s=$1 rc=$2 m c
    size=$s
    xm=m$((s + 1))
    if timeout 30 docker inspect "$(project)-$xm" >/dev/null 2>&1; then
        timeout 30 docker rm -f -v "$(project)-$xm" >/dev/null 2>&1 || say "WARNING: could not remove $(project)-$xm"
    fi
    xc=""
    fw_clear
    for m in $(members); do
        c=$(cid "$m") || continue
        [ "$(docker inspect -f '{{.State.Paused}}' "$c" 2>/dev/null)" != true ] ||
            timeout 30 docker unpause "$c" >/dev/null 2>&1 || true
    done
    dc "$s" logs --no-color --timestamps >"$out/logs-$s.txt" 2>&1 || true
    cluster_down "$s" "$rc"
}

suite() {
    size=$1
    local faults duration f rc hist="$out/history-$size.jsonl" eps="" i
    faults=($(selected "$size"))
    faults_file="$out/faults-$size.jsonl"
    : >"$faults_file"
    : >"$out/timings-$size.txt"
    if [ -n "$share" ]; then
        duration=$share
    else
        duration=$lead_in
        for f in "${faults[@]}"; do duration=$((duration + $(budget "$f"))); done
        duration=$((duration + tail_s))
    fi
    say "$size members: project $(project), subnet $subnet.0/24," \
        "client ports 127.0.0.1:$((base + 1))-$((base + size)); faults: ${faults[*]}"
    cluster_up "$size" 150
    learn_ids "$(endpoints "$size")"
    ((${#ids[@]} >= size)) || die "could not learn the members' IDs"

    rm -f "$work/stop" "$work/acked" "$work/gaveup" "$work/down"
    if [ "$mode" = muster ]; then
        for ((i = 1; i <= size; i++)); do eps+="${eps:+,}m$i=http://127.0.0.1:$((base + i))"; done
        say "workload: ${duration} s (seed $seed), then its final phase"
        # shellcheck disable=SC2086 # workload_args is a list of options
        timeout "$(limit $((duration + 180)))" "$workload_bin" --endpoints "$eps" --duration "${duration}s" \
            --history "$hist" --election-timeout-ms 1000 --request-timeout 2s --final-timeout 60s \
            --seed "$seed" $workload_args >"$out/workload-$size.log" 2>&1 &
        wl_pid=$!
        wl_end_ms=$(($(now_ms) + duration * 1000))
    else
        set_file "$work/phase" start
        touch "$work/acked"
        writer "$size" "/fault-test/$size/" &
        wl_pid=$!
        wl_end_ms=""
    fi
    sleep "$lead_in"
    local round=0 f_ok=1
    ran=()
    # Once through the faults; with --duration, round after round for as
    # long as the next fault fits in the workload's time.
    while ((f_ok)); do
        round=$((round + 1))
        [ -z "$share" ] || say "$size members: round $round"
        for f in "${faults[@]}"; do
            if [ -n "$share" ] && (($(now_ms) + ($(budget "$f") + tail_s) * 1000 > wl_end_ms)); then
                f_ok=0
                break
            fi
            if ! kill -0 "$wl_pid" 2>/dev/null; then
                failures+=("$size: the workload ended before $f")
                f_ok=0
                break
            fi
            run_fault "$f" || { f_ok=0; break; }
            ran[$f]=$((${ran[$f]:-0} + 1))
        done
        [ -n "$share" ] || break
    done
    local counts=""
    for f in "${faults[@]}"; do counts+=" $f ${ran[$f]:-0},"; done
    say "$size members: faults run:${counts%,}"
    echo "faults run:${counts%,}" >>"$out/timings-$size.txt"
    # The workload's time runs out before it reads the final state.
    while [ -n "$share" ] && (($(now_ms) < wl_end_ms - tail_s * 1000)); do sleep 1; done
    sleep "$tail_s"

    if [ "$mode" = muster ]; then
        say "waiting for the workload to finish (it ends about $(((wl_end_ms - $(now_ms)) / 1000)) s from now, then reads every member)"
        rc=0
        wait "$wl_pid" || rc=$?
        wl_pid=""
        tail -5 "$out/workload-$size.log" >&2
        ((rc == 0)) || failures+=("$size: the workload exited with $rc (see workload-$size.log)")
        if [ -s "$hist" ]; then
            rc=0
            timeout "$(limit 600)" "$check_bin" "$hist" --faults "$faults_file" >"$out/check-$size.txt" 2>&1 || rc=$?
            cat "$out/check-$size.txt" >&2
            if ((breakage)); then
                case $rc in
                0) failures+=("$size: with the breakage on, the checker found no anomaly") ;;
                1) say "$size members: with the breakage on, the checker found anomalies, as it must" ;;
                esac
                ((rc > 1)) || rc=-1
            fi
            case $rc in
            -1) ;;
            0) say "$size members: the checker found no anomaly" ;;
            1) failures+=("$size: the checker found anomalies (check-$size.txt)") ;;
            2) failures+=("$size: the checker could not read the history") ;;
            *) failures+=("$size: the checker failed (exit $rc)") ;;
            esac
        else
            failures+=("$size: the workload wrote no history")
        fi
    else
        touch "$work/stop"
        wait "$wl_pid" || true
        wl_pid=""
        cp "$work/acked" "$out/acked-$size.txt"
        [ ! -e "$work/gaveup" ] || cp "$work/gaveup" "$out/gaveup-$size.txt"
        awk '{ n[$1]++; if ($4 > m[$1]) m[$1] = $4; if (!($1 in o)) o[$1] = ++k; p[o[$1]] = $1 }
            END { for (i = 1; i <= k; i++) printf "fault-test:   writes during %-20s %5d acknowledged, slowest %5d ms\n", p[i], n[p[i]], m[p[i]] }' \
            "$work/acked" >&2
        say "$size members: $(wc -l <"$work/acked") writes acknowledged, $(cat "$work/gaveup" 2>/dev/null | wc -l) gave up after 10 s"
        check_acked "$size" "/fault-test/$size/"
        say "$size members: every acknowledged write is on every member"
    fi
    suite_cleanup "$size" 0
}

for size in "${run_sizes[@]}"; do suite "$size"; done

say "timings:"
for size in "${run_sizes[@]}"; do sed "s/^/  [$size] /" "$out/timings-$size.txt" >&2; done
if ((${#failures[@]})); then
    for f in "${failures[@]}"; do say "FAILED: $f"; done
    exit 1
fi
