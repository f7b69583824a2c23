#!/usr/bin/env bash
# Runs muster's test suite on a fresh Debian machine.
#
# Installs the Debian packages the tests need when they are missing:
#   protobuf-compiler  protoc, for the etcd-client crate's build script
#                      (muster's own crates compile protos with protox)
#   etcd-server        a real etcd, for side-by-side and differential tests
#   etcd-client        etcdctl, for command-line compatibility tests
# then runs every test of the workspace (unit, golden, property, interop).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo test --workspace --locked "$@"
