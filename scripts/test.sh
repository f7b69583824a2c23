#!/usr/bin/env bash
# Runs muster's test suite on a fresh Debian machine.
#
# Installs the Debian packages the tests need when they are missing:
#   protobuf-compiler  protoc, for the etcd-client crate's build script
#                      (muster's own crates compile protos with protox)
#   libprotobuf-dev    the well-known .proto files that build script
#                      imports (only recommended by protobuf-compiler)
#   etcd-server        a real etcd, for side-by-side and differential tests
#   etcd-client        etcdctl, for command-line compatibility tests
#   dnsutils           dig, for scripts/dns-test.sh (the DNS interface)
# then runs every test of the workspace (unit, golden, property, interop).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v dig >/dev/null || missing+=(dnsutils)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked "$@" 2>&1 | tee "$log"

# cargo prints one "test result" line per test binary, the last of which is
# often a doc-test binary with no tests; close with the total instead.
read -r passed failed < <(awk '/^test result: /{
    for (i = 1; i <= NF; i++) {
        if ($(i + 1) ~ /^passed;/) p += $i
        if ($(i + 1) ~ /^failed;/) f += $i
    }
} END { print p + 0, f + 0 }' "$log")
echo
echo "total: $passed passed, $failed failed"
if [ "$passed" -eq 0 ]; then
    echo "no test ran" >&2
    exit 1
fi
