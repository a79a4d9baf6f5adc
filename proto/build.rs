//! Compiles `fog/agent/v1/*.proto` and the market link's tunnel protocol
//! (`grpctunnel/v1/tunnel.proto`, with `google/rpc/status.proto`) with protox (pure Rust: no
//! protoc on any machine), and writes the encoded file descriptor set the agent serves through
//! gRPC server reflection.

use std::path::{Path, PathBuf};

use prost::Message;

fn protos_in(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    Ok(files)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let agent_dir = root.join("fog/agent/v1");
    let tunnel_dir = root.join("grpctunnel/v1");
    for dir in [&agent_dir, &tunnel_dir, &root.join("google/rpc")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let fds = protox::compile(protos_in(&agent_dir)?, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("fog_agent_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    // Decode errors are INVALID_ARGUMENT, not INTERNAL: see src/codec.rs.
    // PullImageRequest carries registry credentials: its Debug (src/redact.rs) hides them.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .skip_debug([".fog.agent.v1.PullImageRequest"])
        .compile_fds(fds)?;
    let tunnel = protox::compile(protos_in(&tunnel_dir)?, [&root])?;
    // Message chunks are forwarded without copies: `bytes` fields as `bytes::Bytes`.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .bytes(".grpctunnel")
        .compile_fds(tunnel)?;
    Ok(())
}
