//! The auditor's verifier state: pending enrollment challenges (with their secrets), enrolled
//! AKs, burned nonces and the last accepted clock per AK. One JSON file, `verifier-state.json`,
//! in the auditor's state directory, replaced atomically (write to a temporary file, fsync,
//! rename) and readable only by its owner. One verifier process at a time per directory.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::structures::ClockInfo;

/// File name of the state inside the state directory.
pub const STATE_FILE: &str = "verifier-state.json";

/// Errors reading or writing the verifier state.
#[derive(Debug, Error)]
pub enum StoreError {
    /// File-system failure.
    #[error("verifier state {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("verifier state {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

/// An enrollment challenge waiting for its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrollment {
    /// Host id claimed in the request.
    pub host_id: String,
    /// The credential secret (hex); only the TPM holding the EK can recover it.
    pub secret: String,
    /// AK `TPM2B_PUBLIC` (base64-free hex).
    pub ak_pub: String,
    /// EK `TPM2B_PUBLIC` (hex).
    pub ek_pub: String,
    /// Whether the EK chained to a software-TPM CA.
    pub software_tpm: bool,
    /// Unix seconds when issued.
    pub issued_at: u64,
}

/// An AK whose enrollment proof was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledAk {
    /// Host id.
    pub host_id: String,
    /// AK `TPM2B_PUBLIC` (hex).
    pub ak_pub: String,
    /// EK `TPM2B_PUBLIC` (hex).
    pub ek_pub: String,
    /// Whether the EK chained to a software-TPM CA.
    pub software_tpm: bool,
    /// Unix seconds when enrolled.
    pub enrolled_at: u64,
}

/// The last clock accepted for an AK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockRecord {
    /// TPM clock, ms.
    pub clock: u64,
    /// resetCount.
    pub reset_count: u32,
    /// restartCount.
    pub restart_count: u32,
}

impl From<ClockInfo> for ClockRecord {
    fn from(c: ClockInfo) -> Self {
        Self {
            clock: c.clock,
            reset_count: c.reset_count,
            restart_count: c.restart_count,
        }
    }
}

impl ClockRecord {
    /// As a `ClockInfo` (safe is not recorded; reported as true).
    pub fn to_clock_info(self) -> ClockInfo {
        ClockInfo {
            clock: self.clock,
            reset_count: self.reset_count,
            restart_count: self.restart_count,
            safe: true,
        }
    }
}

/// Everything the verifier remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierState {
    /// Pending challenges by enroll nonce (hex).
    pub pending: BTreeMap<String, PendingEnrollment>,
    /// Enrolled AKs by AK name (hex).
    pub enrolled: BTreeMap<String, EnrolledAk>,
    /// Burned report nonces: SHA-256(nonce) hex -> Unix seconds when used.
    pub nonces: BTreeMap<String, u64>,
    /// Last accepted clock by AK name (hex).
    pub clocks: BTreeMap<String, ClockRecord>,
}

/// The state file in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Uses `dir` (created with mode 0700 when missing).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state (empty when the file does not exist yet).
    pub fn load(&self) -> Result<VerifierState, StoreError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VerifierState::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces the state atomically.
    pub fn save(&self, state: &VerifierState) -> Result<(), StoreError> {
        let path = self.path();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
        // NamedTempFile is created with mode 0600 in the same directory, so rename is atomic.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// Default auditor state directory: `$XDG_DATA_HOME/fog-verifier`, else
/// `$HOME/.local/share/fog-verifier`, else `./fog-verifier`.
pub fn default_verifier_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("fog-verifier");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/fog-verifier");
    }
    PathBuf::from("fog-verifier")
}

/// Current Unix time in seconds.
pub(crate) fn unix_now(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Verifies a report against the state's history; when every check passes, burns the nonce and
/// records the AK's clock. A failed verification changes nothing.
pub fn verify_and_record(
    store: &Store,
    report: &crate::report::Report,
    opts: &crate::verify::VerifyOptions,
) -> Result<crate::verify::Verdict, StoreError> {
    use crate::structures::Public;
    let mut state = store.load()?;
    let ak_name = Public::parse_tpm2b(&report.tpm.ak_pub)
        .ok()
        .and_then(|p| p.name())
        .map(hex::encode);
    let nonce_key = hex::encode(crate::structures::HashAlg::Sha256.digest(&[&report.nonce]));
    let enrolled = ak_name.as_ref().and_then(|n| state.enrolled.get(n));
    let history = crate::verify::History {
        enrolled_ek_pub: enrolled.and_then(|e| hex::decode(&e.ek_pub).ok()),
        enrolled_host_id: enrolled
            .map(|e| e.host_id.clone())
            .filter(|host| !host.is_empty()),
        nonce_used: state.nonces.contains_key(&nonce_key),
        last_clock: ak_name
            .as_ref()
            .and_then(|n| state.clocks.get(n))
            .map(|c| c.to_clock_info()),
    };
    let verdict = crate::verify::verify_report(report, opts, &history);
    if verdict.ok {
        state.nonces.insert(nonce_key, unix_now(opts.now));
        if let (Some(name), Some(clock)) = (ak_name, verdict.clock) {
            state.clocks.insert(name, clock.into());
        }
        store.save(&state)?;
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v")).unwrap();
        assert_eq!(store.load().unwrap(), VerifierState::default());
        let mut s = VerifierState::default();
        s.nonces.insert("ab".into(), 5);
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        std::fs::write(store.path(), b"{").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }
}
