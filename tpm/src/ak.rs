//! The agent's attestation-key state: the AK blob (TPM-wrapped private part plus public part)
//! and the host id it was enrolled under, kept in `ak.json` in the agent's state directory and
//! loaded into the TPM per use (no persistent handles are spent).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::report::b64;

/// File name of the AK state.
pub const AK_FILE: &str = "ak.json";
/// `format` of the AK state file.
pub const AK_FORMAT: &str = "fog-ak-v1";

/// The AK algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AkAlg {
    /// RSA-2048, RSASSA-SHA256 (the default).
    #[default]
    Rsa,
    /// ECC P-256, ECDSA-SHA256.
    Ecc,
}

/// The EK algorithm (TCG default templates; certificates at the matching NV index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EkAlg {
    /// RSA-2048 (template L-1, certificate at 0x01c00002).
    #[default]
    Rsa,
    /// ECC P-256 (template L-2, certificate at 0x01c0000a).
    Ecc,
}

/// Errors reading or writing the AK state.
#[derive(Debug, Error)]
pub enum AkStateError {
    /// No AK created yet.
    #[error("no attestation key in {0}: run `fog-agent attest enroll-request` first")]
    Missing(PathBuf),
    /// File-system failure.
    #[error("AK state {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a valid AK state file.
    #[error("AK state {path} is corrupt: {reason}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// An AK as stored by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkBlob {
    /// Always [`AK_FORMAT`].
    pub format: String,
    /// The host id enrolled with this AK.
    pub host_id: String,
    /// The AK algorithm.
    pub alg: AkAlg,
    /// The parent EK algorithm.
    pub ek_alg: EkAlg,
    /// `TPM2B_PUBLIC` of the AK.
    #[serde(with = "b64")]
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE` contents (wrapped by the EK; useless outside this TPM).
    #[serde(with = "b64")]
    pub private: Vec<u8>,
}

impl AkBlob {
    /// Path of the AK state in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(AK_FILE)
    }

    /// Loads the AK state from `dir`.
    pub fn load(dir: &Path) -> Result<Self, AkStateError> {
        let blob: Self = load_state(dir, &Self::path(dir))?;
        check_format(&Self::path(dir), &blob.format, AK_FORMAT)?;
        Ok(blob)
    }

    /// Saves atomically with mode 0600 (directory created 0700 when missing).
    pub fn save(&self, dir: &Path) -> Result<(), AkStateError> {
        save_state(dir, &Self::path(dir), self)
    }
}

/// Reads a JSON key-state file; a missing file is [`AkStateError::Missing`] naming `dir`.
pub(crate) fn load_state<T: serde::de::DeserializeOwned>(
    dir: &Path,
    path: &Path,
) -> Result<T, AkStateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AkStateError::Missing(dir.to_path_buf()))
        }
        Err(source) => {
            return Err(AkStateError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| AkStateError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A state file whose `format` is not `want` is corrupt.
pub(crate) fn check_format(path: &Path, format: &str, want: &str) -> Result<(), AkStateError> {
    if format == want {
        return Ok(());
    }
    Err(AkStateError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("format \"{format}\""),
    })
}

/// Writes a key-state file atomically with mode 0600 (`dir` created 0700 when missing).
pub(crate) fn save_state<T: Serialize>(
    dir: &Path,
    path: &Path,
    value: &T,
) -> Result<(), AkStateError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| AkStateError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trips_and_missing_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = AkBlob::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("enroll-request"), "{err}");
        let blob = AkBlob {
            format: AK_FORMAT.into(),
            host_id: "h".into(),
            alg: AkAlg::Ecc,
            ek_alg: EkAlg::Rsa,
            public: vec![1, 2],
            private: vec![3],
        };
        blob.save(dir.path()).unwrap();
        assert_eq!(AkBlob::load(dir.path()).unwrap(), blob);
    }
}
