//! `fog-proto` owns fog-agent's gRPC contract: the `.proto` files under `fog/agent/v1/` and the
//! tonic/prost code generated from them at build time with protox (no `protoc` needed anywhere).
//!
//! It also owns the wire schema of the market link's tunnel ([`grpctunnel::v1`], jhump/grpctunnel's
//! protocol) and the `google.rpc.Status` it carries ([`google::rpc`]).
//!
//! Generated types stop at the agent's service and market-link layers; `fog-tpm` and `fog-bench`
//! never see them.

pub mod codec;
mod redact;

/// Package `fog.agent.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("fog.agent.v1");
}

/// Package `grpctunnel.v1`: the reverse tunnel's frames and service.
pub mod grpctunnel {
    /// Revision 0 and 1 frames.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        tonic::include_proto!("grpctunnel.v1");
    }
}

/// Package `google.rpc`: the status model the tunnel carries.
pub mod google {
    /// `google.rpc.Status`.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every `fog.agent.v1` file (with the
/// well-known types it imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fog_agent_v1_descriptor.bin"));
