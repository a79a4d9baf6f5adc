//! The agent's identity key state: a TPM-resident ECC P-256 signing key (not restricted, so it
//! signs TLS handshakes and usage receipts), created under the ECC endorsement key and kept as
//! a blob in `identity-key.json` next to the AK, loaded into the TPM per use.
//!
//! The key is bound to the AK's TPM by `TPM2_Certify` (see `IDENTITY.md`); its private part is
//! wrapped by this TPM's endorsement seed, so a copied state directory is useless elsewhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ak::{check_format, load_state, save_state, AkStateError};
use crate::report::b64;

/// File name of the identity key state.
pub const IDENTITY_KEY_FILE: &str = "identity-key.json";
/// `format` of the identity key state file.
pub const IDENTITY_KEY_FORMAT: &str = "fog-identity-key-v1";

/// File name of the cached certification of the identity key by the AK.
pub const CERTIFICATION_FILE: &str = "identity-certification.json";

/// The cached certification in `dir` (a [`crate::receipt::CertifiedKey`]), if readable.
pub fn load_certification(dir: &Path) -> Option<crate::receipt::CertifiedKey> {
    load_state(dir, &dir.join(CERTIFICATION_FILE)).ok()
}

/// Saves the certification in `dir` atomically (mode 0600).
pub fn save_certification(
    dir: &Path,
    certified: &crate::receipt::CertifiedKey,
) -> Result<(), AkStateError> {
    save_state(dir, &dir.join(CERTIFICATION_FILE), certified)
}

/// The identity key as stored by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityKeyBlob {
    /// Always [`IDENTITY_KEY_FORMAT`].
    pub format: String,
    /// `TPM2B_PUBLIC` of the key (ECC P-256, ECDSA-SHA256).
    #[serde(with = "b64")]
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE` contents (wrapped under the ECC EK; useless outside this TPM).
    #[serde(with = "b64")]
    pub private: Vec<u8>,
}

impl IdentityKeyBlob {
    /// Path of the identity key state in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(IDENTITY_KEY_FILE)
    }

    /// Loads the identity key state from `dir`.
    pub fn load(dir: &Path) -> Result<Self, AkStateError> {
        let path = Self::path(dir);
        let blob: Self = load_state(dir, &path)?;
        check_format(&path, &blob.format, IDENTITY_KEY_FORMAT)?;
        Ok(blob)
    }

    /// Saves atomically with mode 0600 (directory created 0700 when missing).
    pub fn save(&self, dir: &Path) -> Result<(), AkStateError> {
        save_state(dir, &Self::path(dir), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trips_and_a_wrong_format_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            IdentityKeyBlob::load(dir.path()),
            Err(AkStateError::Missing(_))
        ));
        let blob = IdentityKeyBlob {
            format: IDENTITY_KEY_FORMAT.into(),
            public: vec![1, 2],
            private: vec![3],
        };
        blob.save(dir.path()).unwrap();
        assert_eq!(IdentityKeyBlob::load(dir.path()).unwrap(), blob);
        let other = IdentityKeyBlob {
            format: "fog-ak-v1".into(),
            ..blob
        };
        other.save(dir.path()).unwrap();
        let err = IdentityKeyBlob::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("fog-ak-v1"), "{err}");
    }
}
