#!/usr/bin/env bash
# muster against etcd, side by side, on this machine: a 3-member etcd
# (Debian's etcd-server) and a 3-member muster on loopback, both with fsync
# on, the same muster-bench workloads against each, one after the other.
#
#   bash scripts/bench-vs-etcd.sh [--quick] [--out DIR] [--only NAME[,NAME]]
#                                 [--systems etcd,muster] [--muster-bin PATH]
#
# --systems runs only those systems (the table then shows what it has);
# --muster-bin measures that muster binary instead of building one (to
# compare two builds of muster: run each with --systems muster).
#
# For each system it
#   1. starts 3 members on free loopback ports with fresh data dirs;
#   2. writes 100,000 keys (32-byte keys, 256-byte values, 64 clients) and
#      records the members' RSS and data dirs right after ("rss", "disk");
#   3. runs the workloads, each as one muster-bench run whose JSON line is
#      kept, with the servers' CPU time (utime + stime from /proc) around
#      it: put with 64, 256 and 1 client(s), put with a lease (64), range
#      linearizable and serializable (64), watch (10,000 watchers on 100
#      streams, 100 puts), lease (100,000 leases with a key each, kept
#      alive 60 s), registry (10,000 instances registering at once and
#      kept alive 60 s while 1,000 watchers follow them);
#   4. kills the leader with SIGKILL and measures the time until a put on
#      the other members succeeds, restarts the killed member and repeats,
#      7 times in all (3 with --quick): "failover" is the median;
#   5. stops the cluster. For muster it then fills a fresh single member
#      with 1,000,000 keys, restarts it, and measures the time until it
#      answers a linearizable read ("restart-1m").
# Then it prints the comparison table (the issue's targets, each ratio
# muster/etcd, and whether it is met) and writes into DIR:
#   results.jsonl   one line per measurement {"system","name",...}
#   table.md        the comparison table in Markdown
#   machine.txt     CPU, memory, kernel, versions
#   logs/           the servers' logs
#
# --quick scales every total down (10,000 keys instead of 100,000, 2,000
# leases held 15 s, 1,000 watchers, 1,000 instances with 100 watchers for
# 15 s, 100,000 keys for the restart) to check
# the script in a few minutes; its numbers are not the comparison.
#
# Installs Debian's etcd-server and etcd-client when missing (as root).
# Traffic stays on 127.0.0.1. Every step is bounded by `timeout`; the
# servers are killed on every exit. Needs about 2 GiB free for the data
# dirs in full mode.
set -euo pipefail
cd "$(dirname "$0")/.."

log_name=bench-vs-etcd
# say, die, now_ms, port_free, install_missing.
source scripts/lib/cluster.sh

quick=0 out="" only="" systems="etcd,muster" muster_bin=""
while (($#)); do
    case $1 in
    --quick) quick=1 ;;
    --out) out=${2:?}; shift ;;
    --only) only=${2:?}; shift ;;
    --systems) systems=${2:?}; shift ;;
    --muster-bin) muster_bin=$(realpath "${2:?}"); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

if ((quick)); then
    fill_keys=10000 put_total=5000 put1_total=1000 range_total=20000 failovers=3
    watchers=1000 watch_streams=10 leases=2000 lease_hold=15s restart_keys=100000
    reg_instances=1000 reg_watchers=100 reg_for=15s
else
    fill_keys=100000 put_total=30000 put1_total=3000 range_total=100000 failovers=7
    watchers=10000 watch_streams=100 leases=100000 lease_hold=60s restart_keys=1000000
    reg_instances=10000 reg_watchers=1000 reg_for=60s
fi

# --- tools ----------------------------------------------------------------------

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v jq >/dev/null || missing+=(jq)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
install_missing "${missing[@]}"
say "building muster and muster-bench (release)"
timeout "${MUSTER_BUILD_TIMEOUT:-1800}" cargo build --release --locked -q -p muster-cli -p muster-bench
muster_bin=${muster_bin:-$PWD/target/release/muster}
bench_bin=$PWD/target/release/muster-bench
[ -x "$muster_bin" ] || die "no muster binary at $muster_bin"

work=$(mktemp -d)
if [ -z "$out" ]; then out=$(mktemp -d); fi
mkdir -p "$out/logs"
: >"$out/results.jsonl"
say "output in $out"

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "etcd: $(etcd --version 2>/dev/null | head -1)"
    echo "muster: $("$muster_bin" --version 2>/dev/null | head -1) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo "data dirs: $(df -T "$work" | awk 'NR == 2 { print $2 }') at $work"
} >"$out/machine.txt"

# --- ports and clusters ---------------------------------------------------------------

# free_base: a base port B with B+1..B+9 free, below the kernel's ephemeral
# range (the members' own outgoing connections could take a port above it
# between this check and the member binding it).
free_base() {
    local b i ok low
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    for ((b = 10000 + RANDOM % ((low - 10010) / 10) * 10; ; b += 10)); do
        ok=1
        for ((i = 1; i <= 9; i++)); do port_free $((b + i)) || { ok=0; break; }; done
        ((ok)) && { echo "$b"; return; }
    done
}

system="" base=0 mpids=() client_eps="" data_dirs=() initial_cluster=""
client_port() { echo $((base + $1)); }      # member 1..3: B+1..B+3
peer_port() { echo $((base + 3 + $1)); }    # B+4..B+6
metrics_port() { echo $((base + 6 + $1)); } # B+7..B+9 (muster)

# start_member SYSTEM I CLUSTER STATE
start_member() {
    local s=$1 i=$2 initial=$3 dir="$work/$1-$2"
    data_dirs[i]=$dir
    local args=(--name "m$i" --data-dir "$dir"
        --listen-client-urls "http://127.0.0.1:$(client_port "$i")"
        --advertise-client-urls "http://127.0.0.1:$(client_port "$i")"
        --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")"
        --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")"
        --initial-cluster "$initial" --initial-cluster-state "${4:-new}"
        --initial-cluster-token "bench-$s-$base")
    if [ "$s" = etcd ]; then
        # etcd's defaults otherwise: fsync on, 100 ms heartbeat, 1 s election.
        etcd "${args[@]}" --quota-backend-bytes 8589934592 \
            >>"$out/logs/etcd-m$i.log" 2>&1 &
    else
        # No DNS (members side by side would share its port); the variable,
        # not the flag, so that --muster-bin may name a build without DNS.
        MUSTER_LISTEN_DNS="" "$muster_bin" "${args[@]}" \
            --listen-metrics-urls "http://127.0.0.1:$(metrics_port "$i")" \
            >>"$out/logs/muster-m$i.log" 2>&1 &
    fi
    mpids[i]=$!
    pids+=("$!")
}

# cluster_start SYSTEM N: N members (1 or 3), waits until all are healthy.
cluster_start() {
    system=$1
    local n=$2 i t0
    base=$(free_base)
    initial_cluster=""
    for ((i = 1; i <= n; i++)); do initial_cluster+="${initial_cluster:+,}m$i=http://127.0.0.1:$(peer_port "$i")"; done
    client_eps=""
    for ((i = 1; i <= n; i++)); do
        start_member "$system" "$i" "$initial_cluster"
        client_eps+="${client_eps:+,}127.0.0.1:$(client_port "$i")"
    done
    t0=$(now_ms)
    until timeout 5 etcdctl --endpoints "$client_eps" --dial-timeout=1s --command-timeout=2s \
        endpoint health >/dev/null 2>&1; do
        (($(now_ms) - t0 < 60000)) || die "$system: the cluster did not become healthy within 60 s"
        sleep 0.2
    done
    say "$system: $n members healthy on $client_eps after $(($(now_ms) - t0)) ms"
}

cluster_stop() {
    local i
    for i in "${!mpids[@]}"; do kill -9 "${mpids[i]}" 2>/dev/null || true; done
    for i in "${!mpids[@]}"; do wait "${mpids[i]}" 2>/dev/null || true; done
    mpids=()
}

# cpu_ticks: the members' utime + stime, in clock ticks.
cpu_ticks() {
    local i t=0 f
    for i in "${!mpids[@]}"; do
        f=$(cut -d' ' -f14,15 "/proc/${mpids[i]}/stat" 2>/dev/null || echo "0 0")
        t=$((t + ${f% *} + ${f#* }))
    done
    echo "$t"
}
# mem_kib FIELD: the sum of FIELD (VmRSS, VmHWM) over the members.
mem_kib() {
    local i s=0 v
    for i in "${!mpids[@]}"; do
        v=$(awk -v f="$1:" '$1 == f { print $2 }' "/proc/${mpids[i]}/status" 2>/dev/null || echo 0)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}
disk_bytes() { du -sb "${data_dirs[@]}" | awk '{ s += $1 } END { print s }'; }
hz=$(getconf CLK_TCK)

# result NAME JSON: one line of results.jsonl.
result() {
    jq -c --arg system "$system" --arg name "$1" '{system: $system, name: $name} + .' <<<"$2" \
        >>"$out/results.jsonl"
}

# bench NAME BOUND ARGS...: one muster-bench run with the servers' CPU time.
bench() {
    local name=$1 bound=$2 c0 c1 line
    shift 2
    wanted "$name" || return 0
    c0=$(cpu_ticks)
    if ! line=$(timeout "$bound" "$bench_bin" --endpoints "$client_eps" --json "$@" | tail -1); then
        say "$system $name: muster-bench failed or timed out after $bound s"
        line='{"failed":true}'
    fi
    c1=$(cpu_ticks)
    line=$(jq -c --argjson cpu "$(awk -v t=$((c1 - c0)) -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }')" \
        '. + {server_cpu_s: $cpu}' <<<"$line")
    result "$name" "$line"
    say "$system $name: $(jq -r '"\(.throughput // 0 | floor) ops/s, p50 \(.latency_ms.p50 // 0) ms, p99 \(.latency_ms.p99 // 0) ms, errors \(.errors // "?"), server CPU \(.server_cpu_s) s"' <<<"$line")"
}

# leader_port: the client port of the member that is leader.
leader_port() {
    etcdctl --endpoints "$client_eps" --dial-timeout=1s --command-timeout=2s endpoint status -w json 2>/dev/null |
        jq -r '[.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint][0] // empty' |
        sed 's/.*://'
}

# failover: kill -9 the leader, time until a put through the others
# succeeds; restart the killed member, wait until all are healthy, and
# again, $failovers times in all. Records the median and every sample.
failover() {
    wanted failover || return 0
    local round lp i li others t0 ms samples=()
    for ((round = 1; round <= failovers; round++)); do
        lp=$(leader_port)
        [ -n "$lp" ] || { say "$system failover: no leader found"; break; }
        li=0 others=""
        for i in 1 2 3; do
            if [ "$(client_port "$i")" = "$lp" ]; then li=$i; else others+="${others:+,}127.0.0.1:$(client_port "$i")"; fi
        done
        t0=$(now_ms)
        kill -9 "${mpids[li]}"
        wait "${mpids[li]}" 2>/dev/null || true
        until etcdctl --endpoints "$others" --dial-timeout=500ms --command-timeout=500ms \
            put bench/failover x >/dev/null 2>&1; do
            (($(now_ms) - t0 < 60000)) || { say "$system failover: no write within 60 s"; break 2; }
        done
        ms=$(($(now_ms) - t0))
        samples+=("$ms")
        say "$system failover $round/$failovers: first write $ms ms after kill -9 of the leader (m$li)"
        ((round < failovers)) || break
        # The killed member comes back on its data dir; the next round
        # starts once every member answers again.
        start_member "$system" "$li" "$initial_cluster"
        t0=$(now_ms)
        until timeout 5 etcdctl --endpoints "$client_eps" --dial-timeout=1s --command-timeout=2s \
            endpoint health >/dev/null 2>&1; do
            (($(now_ms) - t0 < 60000)) || { say "$system failover: m$li did not rejoin within 60 s"; break 2; }
            sleep 0.2
        done
    done
    ((${#samples[@]})) || return 0
    result failover "$(printf '%s\n' "${samples[@]}" | jq -sc '{ms: (sort | .[length / 2 | floor]), samples: .}')"
}

# --- one system -------------------------------------------------------------------

run_system() {
    local s=$1 t0
    cluster_start "$s" 3
    if wanted rss || wanted disk; then
        t0=$(now_ms)
        # `range` prefills every key of its key space first (one read after).
        timeout 900 "$bench_bin" --endpoints "$client_eps" --json --clients 64 --total 1 \
            --key-space "$fill_keys" --key-size 32 --val-size 256 range >/dev/null
        sleep 2
        result rss "{\"kib\":$(mem_kib VmRSS),\"keys\":$fill_keys}"
        result disk "{\"bytes\":$(disk_bytes),\"keys\":$fill_keys}"
        say "$s: $fill_keys keys in $(($(now_ms) - t0)) ms; RSS $(($(mem_kib VmRSS) / 1024)) MiB, data dirs $(($(disk_bytes) / 1048576)) MiB"
    fi
    bench put-64 600 --clients 64 --total "$put_total" put
    bench put-256 600 --clients 256 --conns 100 --total "$put_total" put
    bench put-1 600 --clients 1 --total "$put1_total" put
    bench put-lease-64 600 --clients 64 --total "$put_total" put --lease
    bench range-l-64 600 --clients 64 --total "$range_total" range --consistency l
    bench range-s-64 600 --clients 64 --total "$range_total" range --consistency s --no-prefill
    bench watch 600 --clients 8 watch --watchers "$watchers" --streams "$watch_streams" --puts 100
    bench lease 1200 --clients 64 --request-timeout 30s lease --leases "$leases" --ttl 30 \
        --hold "$lease_hold" --streams 16
    # The registry mix: every instance registers at once and is kept alive
    # to the end (lives far longer than the run) while the watchers follow.
    bench registry 1200 --clients 64 --request-timeout 30s registry --instances "$reg_instances" \
        --watchers "$reg_watchers" --ttl 10 --for "$reg_for" --max-life 1000h
    result peak "{\"kib\":$(mem_kib VmHWM)}"
    failover
    cluster_stop
}

# restart_1m: muster only, one member with many keys, time until it serves.
restart_1m() {
    wanted restart-1m || return 0
    local t0 ms
    # Its own data dir ($work/muster-1m-1), not the 3-member cluster's.
    cluster_start muster-1m 1
    system=muster
    timeout 1800 "$bench_bin" --endpoints "$client_eps" --json --clients 128 --conns 16 \
        --total 1 --key-space "$restart_keys" --key-size 32 --val-size 256 range >/dev/null
    cluster_stop
    t0=$(now_ms)
    start_member muster-1m 1 "m1=http://127.0.0.1:$(peer_port 1)"
    until timeout 2 etcdctl --endpoints "$client_eps" --dial-timeout=500ms --command-timeout=1s \
        get bench/range/0 >/dev/null 2>&1; do
        (($(now_ms) - t0 < 120000)) || { say "muster restart: not serving within 120 s"; break; }
        sleep 0.05
    done
    ms=$(($(now_ms) - t0))
    result restart-1m "{\"ms\":$ms,\"keys\":$restart_keys}"
    say "muster: restarted with $restart_keys keys, serving after $ms ms"
    cluster_stop
}

for s in etcd muster; do
    if [[ ",$systems," == *",$s,"* ]]; then run_system "$s"; fi
done
if [[ ",$systems," == *",muster,"* ]]; then
    system=muster
    restart_1m
fi

# --- the table ------------------------------------------------------------------------

jq -rs -f /dev/stdin "$out/results.jsonl" >"$out/table.md" <<'JQ'
def get(s; n): (map(select(.system == s and .name == n)) | .[0]) // {};
def r(x): if x == null then "–" else (x * 100 | round / 100 | tostring) end;
def zero(what; n; f):
  (get("etcd"; n) | f) as $e | (get("muster"; n) | f) as $m |
  "| \(what) | \(r($e)) | \(r($m)) | – | 0 | \(if $m == 0 then "yes" elif $m == null then "–" else "no" end) |";
def row(what; n; f; target; better):
  (get("etcd"; n) | f) as $e | (get("muster"; n) | f) as $m |
  (if $e != null and $m != null and $e > 0 then $m / $e else null end) as $ratio |
  "| \(what) | \(r($e)) | \(r($m)) | \(r($ratio))× | \(target) | " +
  (if $ratio == null then "–" elif better == "higher" then (if $ratio >= (target | ltrimstr("≥ ") | rtrimstr("×") | tonumber) then "yes" else "no" end)
   else (if $ratio <= (target | ltrimstr("≤ ") | rtrimstr("×") | tonumber) then "yes" else "no" end) end) + " |";
"| workload, 3 members on loopback | etcd | muster | muster/etcd | target | met |",
"|---|---|---|---|---|---|",
row("put, 64 clients: throughput (ops/s)"; "put-64"; .throughput; "≥ 1.5×"; "higher"),
row("put, 256 clients: throughput (ops/s)"; "put-256"; .throughput; "≥ 1.5×"; "higher"),
row("put, 64 clients: p99 (ms)"; "put-64"; .latency_ms.p99; "≤ 1.0×"; "lower"),
row("put, 256 clients: p99 (ms)"; "put-256"; .latency_ms.p99; "≤ 1.0×"; "lower"),
row("put, 1 client: p50 (ms)"; "put-1"; .latency_ms.p50; "≤ 1.0×"; "lower"),
row("put with lease, 64 clients: throughput (ops/s)"; "put-lease-64"; .throughput; "≥ 2×"; "higher"),
row("linearizable range, 64 clients: throughput (ops/s)"; "range-l-64"; .throughput; "≥ 2×"; "higher"),
row("serializable range, 64 clients: throughput (ops/s)"; "range-s-64"; .throughput; "≥ 2×"; "higher"),
zero("watch: events lost"; "watch"; .counts.lost),
row("watch: put-to-event p99 (ms)"; "watch"; .latency_ms.p99; "≤ 1.0×"; "lower"),
zero("lease: keys lost"; "lease"; .counts.keys_lost),
row("lease: grants/s"; "lease"; .throughput; "≥ 1.5×"; "higher"),
row("registry: registrations/s (all instances at once)"; "registry"; .counts.registrations_per_s; "≥ 1.0×"; "higher"),
row("registry: watch delivery p50 (ms)"; "registry"; .latencies_ms["watch-delivery"].p50; "≤ 1.0×"; "lower"),
row("registry: watch delivery p99 (ms)"; "registry"; .latencies_ms["watch-delivery"].p99; "≤ 1.0×"; "lower"),
zero("registry: watchers whose view differs"; "registry"; .counts.views_mismatched),
row("server CPU per put, 64 clients (ms)"; "put-64"; (if .ops then .server_cpu_s * 1000 / .ops else null end); "≤ 0.6×"; "lower"),
row("RSS after the keys (MiB)"; "rss"; (if .kib then .kib / 1024 else null end); "≤ 0.5×"; "lower"),
row("data dirs after the keys (MiB)"; "disk"; (if .bytes then .bytes / 1048576 else null end); "≤ 0.5×"; "lower"),
row("kill -9 the leader: first write (ms)"; "failover"; .ms; "≤ 1.0×"; "lower"),
"| restart one member holding \(get("muster"; "restart-1m").keys // "–") keys: serving after (ms) | – | \(get("muster"; "restart-1m").ms // "–") | – | ≤ 5 s | \(if (get("muster"; "restart-1m").ms // 1e9) <= 5000 then "yes" else "no" end) |"
JQ
cat "$out/table.md"
say "results in $out (results.jsonl, table.md, machine.txt)"
