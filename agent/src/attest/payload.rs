//! The attestation payload P: the bytes a `fog-attest-v1` report signs (through the quote's
//! qualifying data) and ships. Its schema is `fog_tpm::report::Payload`; this module fills it
//! with what the agent attests: host id, nonce, agent version, the inventory and the benchmark
//! results cached for the inventory's hardware fingerprint. `fog-agent attest` and the daemon's
//! `GetAttestation` build it here, so both sign the same document.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use fog_tpm::report::{Payload, ReportError, PAYLOAD_FORMAT};

use crate::inventory::Inventory;
use crate::state::StateError;

/// Why the payload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The inventory could not be turned into JSON.
    #[error("cannot serialize the inventory")]
    Inventory(#[source] serde_json::Error),
    /// The cached benchmark results could not be read.
    #[error("cannot read the cached benchmark results")]
    Benchmarks(#[source] StateError),
    /// The payload could not be serialized.
    #[error("cannot serialize the payload")]
    Serialize(#[source] ReportError),
}

/// Serializes P once: host id, nonce, agent version, `inventory` and `benchmarks`
/// (`None` -> `"benchmarks": null`).
pub fn build(
    host_id: &str,
    nonce: &[u8],
    inventory: &Inventory,
    benchmarks: Option<serde_json::Value>,
) -> Result<Vec<u8>, PayloadError> {
    let payload = Payload {
        format: PAYLOAD_FORMAT.into(),
        host_id: host_id.to_string(),
        nonce: nonce.to_vec(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        collected_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        inventory: serde_json::to_value(inventory).map_err(PayloadError::Inventory)?,
        benchmarks,
    };
    payload.to_bytes().map_err(PayloadError::Serialize)
}

/// P over `inventory` and the benchmark results cached under `state_dir` for its fingerprint.
pub fn build_with_cached_benchmarks(
    state_dir: &Path,
    host_id: &str,
    nonce: &[u8],
    inventory: &Inventory,
) -> Result<Vec<u8>, PayloadError> {
    let benchmarks = crate::bench::cached_results(state_dir, &crate::bench::fingerprint(inventory))
        .map_err(PayloadError::Benchmarks)?;
    build(host_id, nonce, inventory, Some(benchmarks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsroot::FsRoot;

    #[test]
    fn payload_carries_the_host_nonce_inventory_and_benchmarks() {
        let inventory = crate::inventory::collect_from(FsRoot::new("/nonexistent-root"));
        let bytes = build(
            "host-a",
            &[7; 16],
            &inventory,
            Some(serde_json::json!({"results": []})),
        )
        .unwrap();
        let back: Payload = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.format, PAYLOAD_FORMAT);
        assert_eq!(back.host_id, "host-a");
        assert_eq!(back.nonce, vec![7; 16]);
        assert_eq!(back.inventory, serde_json::to_value(&inventory).unwrap());
        assert_eq!(back.benchmarks, Some(serde_json::json!({"results": []})));
    }
}
