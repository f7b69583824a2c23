//! Compiles the peer protocol `proto/muster/raft/v1/raft.proto` (at the
//! workspace root) with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed) and tonic-prost-build.

use std::path::PathBuf;

const PROTOS: [&str; 1] = ["muster/raft/v1/raft.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let fds = protox::compile(PROTOS, [&root])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Payloads become `bytes::Bytes`: decoded in place, never copied.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
