#!/usr/bin/env bash
# The DNS interface of a real `muster` binary, checked with dig (Debian's
# dnsutils) and etcdctl (Debian's etcd-client):
#
#   1. builds the muster binary (MUSTER_BIN=PATH tests that binary instead)
#   2. starts one member on free loopback ports with a temporary data dir
#      and --listen-dns 127.0.0.1:<free port>
#   3. registers the instance api/1 (10.0.0.1:8080, weight 2, tag v2)
#      under a lease with etcdctl, the value in the registry's JSON format
#   4. checks with dig, over UDP and TCP:
#        api.service.muster A +short           -> 10.0.0.1
#        v2.api.service.muster A +short        -> 10.0.0.1
#        _api._tcp.service.muster SRV +short   -> 1 2 8080 0a000001.addr.muster.
#          with 0a000001.addr.muster. A 10.0.0.1 in the additional section
#        db.service.muster A                   -> NXDOMAIN, the SOA (minimum
#                                                 --dns-negative-ttl) in the
#                                                 authority section
#        example.com A                         -> REFUSED
#   5. revokes the lease and checks that api.service.muster A and SRV turn
#      NXDOMAIN (the service has no key left) with an empty answer
#
# Every wait is bounded; the member is stopped and the data dir removed on
# every exit. Traffic stays on 127.0.0.1. Installs dnsutils and etcd-client
# when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

log_name=dns-test
# say, die, port_free, install_missing.
source scripts/lib/cluster.sh

missing=()
command -v dig >/dev/null || missing+=(dnsutils)
command -v etcdctl >/dev/null || missing+=(etcd-client)
install_missing "${missing[@]}"

if [ -n "${MUSTER_BIN:-}" ]; then
    muster_bin=$(realpath "$MUSTER_BIN")
else
    timeout "${MUSTER_BUILD_TIMEOUT:-1800}" cargo build --locked -q -p muster-cli --bin muster
    muster_bin=$PWD/target/debug/muster
fi
[ -x "$muster_bin" ] || die "no muster binary at $muster_bin"

work=$(mktemp -d)
muster_pid=""
teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$muster_pid" ] && kill -0 "$muster_pid" 2>/dev/null; then
        kill -TERM "$muster_pid" 2>/dev/null || true
        timeout 10 tail --pid="$muster_pid" -f /dev/null 2>/dev/null || kill -KILL "$muster_pid" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -f "$work/muster.log" ]; then
        say "member log:"
        tail -n 50 "$work/muster.log" >&2
    fi
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then say "OK"; else say "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# Four free ports in a row (peer, client, metrics, DNS), from a random
# base below the ephemeral range; port_free checks TCP, the member's own
# start-up checks UDP (a taken port fails the start, which is reported).
base=""
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 10000))
    if port_free "$candidate" && port_free $((candidate + 1)) &&
        port_free $((candidate + 2)) && port_free $((candidate + 3)); then
        base=$candidate
        break
    fi
done
[ -n "$base" ] || die "no four free loopback ports"
peer=http://127.0.0.1:$base
client=127.0.0.1:$((base + 1))
metrics=http://127.0.0.1:$((base + 2))
dns_port=$((base + 3))

say "starting muster: client $client, DNS 127.0.0.1:$dns_port (UDP and TCP)"
"$muster_bin" --name dns-test --data-dir "$work/data" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --listen-client-urls "http://$client" --advertise-client-urls "http://$client" \
    --listen-metrics-urls "$metrics" --initial-cluster-token "dns-test-$$" \
    --listen-dns "127.0.0.1:$dns_port" --dns-negative-ttl 17 \
    >"$work/muster.log" 2>&1 &
muster_pid=$!

ctl() { timeout 10 etcdctl --endpoints "$client" --dial-timeout=2s --command-timeout=5s "$@"; }
# dig_at ARGS: dig at the member, one try of at most 2 s per query.
dig_at() { timeout 10 dig @127.0.0.1 -p "$dns_port" +time=2 +tries=1 "$@"; }

# until_true SECONDS DESCRIPTION COMMAND...: runs COMMAND until it
# succeeds, at most SECONDS.
until_true() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + seconds))
    until "$@"; do
        kill -0 "$muster_pid" 2>/dev/null || die "muster exited while waiting for $what"
        [ "$(date +%s)" -lt "$deadline" ] || die "$what: not within ${seconds}s"
        sleep 0.2
    done
}

healthy() { ctl endpoint health >/dev/null 2>&1; }
soa_answered() { [ -n "$(dig_at muster SOA +short 2>/dev/null)" ]; }
until_true 30 "the member to be healthy" healthy
until_true 10 "DNS to answer the SOA" soa_answered

lease=$(ctl lease grant 60 | awk '/granted/ { print $2 }')
[ -n "$lease" ] || die "etcdctl lease grant gave no lease"
value='{"Addr":"10.0.0.1:8080","Metadata":{"version":1,"service":"api","id":"1","tags":["v2"],"weight":2,"health":"passing"}}'
ctl put --lease="$lease" /registry/services/api/1 "$value" >/dev/null
say "registered api/1 under lease $lease"

# expect DESCRIPTION EXPECTED ARGS: dig ARGS prints EXPECTED (the whole
# output, runs of blanks and tabs read as one space).
expect() {
    local what=$1 expected=$2 got
    shift 2
    got=$(dig_at "$@" | tr -s ' \t' ' ') || die "$what: dig $* failed"
    [ "$got" = "$expected" ] || die "$what: dig $* gave '$got', expected '$expected'"
    say "$what: $(tr '\n' ' ' <<<"$got")"
}
# status ARGS: the status dig reports (NOERROR, NXDOMAIN, REFUSED, ...).
status() { dig_at "$@" +noall +comments | sed -n 's/.*status: \([A-Z]*\),.*/\1/p'; }
a_is() { [ "$(dig_at api.service.muster A +short)" = "$1" ]; }

until_true 10 "api.service.muster A to answer 10.0.0.1" a_is 10.0.0.1
for transport in +notcp +tcp; do
    expect "A ($transport)" 10.0.0.1 api.service.muster A +short "$transport"
    expect "A, any case ($transport)" 10.0.0.1 API.Service.Muster A +short "$transport"
    expect "tag v2 A ($transport)" 10.0.0.1 v2.api.service.muster A +short "$transport"
    expect "SRV ($transport)" "1 2 8080 0a000001.addr.muster." \
        _api._tcp.service.muster SRV +short "$transport"
    expect "SRV additional ($transport)" "0a000001.addr.muster. 5 IN A 10.0.0.1" \
        _api._tcp.service.muster SRV +noall +additional "$transport"
    expect "SRV target A ($transport)" 10.0.0.1 0a000001.addr.muster A +short "$transport"
done

[ "$(status db.service.muster A)" = NXDOMAIN ] || die "db.service.muster A is not NXDOMAIN"
soa=$(dig_at db.service.muster A +noall +authority)
# muster. 17 IN SOA ns.muster. hostmaster.muster. <serial> 3600 600 86400 17
awk '$4 == "SOA" && $2 == 17 && $NF == 17 { found = 1 } END { exit !found }' <<<"$soa" ||
    die "NXDOMAIN without the SOA (TTL and minimum 17): '$soa'"
say "db.service.muster A: NXDOMAIN, $soa"
[ "$(status example.com A)" = REFUSED ] || die "example.com A is not REFUSED"
say "example.com A: REFUSED"

ctl lease revoke "$lease" >/dev/null
say "revoked lease $lease"
nxdomain() { [ "$(status api.service.muster A)" = NXDOMAIN ]; }
until_true 10 "api.service.muster A to turn NXDOMAIN" nxdomain
expect "A after the revoke" "" api.service.muster A +short
expect "SRV after the revoke" "" _api._tcp.service.muster SRV +short
[ "$(status _api._tcp.service.muster SRV)" = NXDOMAIN ] || die "SRV is not NXDOMAIN after the revoke"
say "api.service.muster A and SRV: NXDOMAIN after the revoke"
