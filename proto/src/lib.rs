//! `fog-proto` owns fog-agent's gRPC contract: the `.proto` files under `fog/agent/v1/` and the
//! tonic/prost code generated from them at build time with protox (no `protoc` needed anywhere).
//!
//! Generated types stop at the agent's service layer; `fog-tpm` and `fog-bench` never see them.

pub mod codec;

/// Package `fog.agent.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("fog.agent.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of every `fog.agent.v1` file (with the
/// well-known types it imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fog_agent_v1_descriptor.bin"));
