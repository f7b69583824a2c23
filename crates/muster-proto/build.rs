//! Compiles the etcd v3.5 protos in `proto/` (at the workspace root) into
//! Rust with protox (a pure-Rust protobuf compiler, so no system `protoc` is
//! needed) and tonic-prost-build.

use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "muster/registry/v1/registry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&root])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys, values and other `bytes` fields become `bytes::Bytes`, so they
        // can be shared with the store without copying.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
