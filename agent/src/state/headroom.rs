//! Headroom on the state dir's filesystem: the free-space floor below which new work is
//! refused, and the slack kept for the state database.
//!
//! - **Floor** (`[state] min_free_bytes`): [`Headroom::check_floor`] fails while the free space
//!   (what an unprivileged writer may use, `f_bavail`) is below it. The job runner refuses new
//!   jobs and image imports then, so the agent's own records keep room.
//! - **Slack** (`[state] slack_bytes`): a preallocated file, [`SLACK_FILE`], holding that much
//!   of the disk (`fallocate`: real blocks, no data written). When a commit fails because the
//!   filesystem is full, its writer calls [`Headroom::release`], which deletes the file, and
//!   retries: the database gets the space back even when a job (or its logs) took the rest.
//!   [`Headroom::replenish`] makes the file again once there is room for it above the floor.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The slack file in the state dir.
pub const SLACK_FILE: &str = "state.slack";

/// Why a headroom operation failed (each message carries its cause once).
#[derive(Debug, thiserror::Error)]
pub enum HeadroomError {
    /// The free space could not be read.
    #[error("cannot read the free space of {}: {error}", dir.display())]
    Statvfs {
        /// The state dir.
        dir: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The free space is below the floor.
    #[error(
        "state.min_free_bytes: {free} bytes free on the filesystem of {}, below the floor of \
         {floor} bytes: new jobs and image imports are refused until space is freed",
        dir.display()
    )]
    BelowFloor {
        /// The state dir.
        dir: PathBuf,
        /// Free bytes now.
        free: u64,
        /// The floor.
        floor: u64,
    },
    /// The slack file could not be made.
    #[error("cannot make the state database's slack {}: {error}", path.display())]
    Slack {
        /// The slack file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// The state filesystem as the headroom sees it at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStatus {
    /// Free bytes for an unprivileged writer (the slack file's space is not free).
    pub free_bytes: u64,
    /// `[state] min_free_bytes`.
    pub floor_bytes: u64,
    /// Bytes the slack file holds now (0 once released, until it is made again).
    pub slack_bytes: u64,
}

impl DiskStatus {
    /// Whether the free space is below the floor.
    pub fn below_floor(&self) -> bool {
        self.free_bytes < self.floor_bytes
    }
}

/// The floor and slack of one state dir (see the module doc).
#[derive(Debug)]
pub struct Headroom {
    dir: PathBuf,
    floor_bytes: u64,
    slack_bytes: u64,
    /// Whether the floor was passed at the last check (logs once per crossing).
    below: AtomicBool,
}

impl Headroom {
    /// The headroom of `dir` (nothing is made until [`Self::replenish`]).
    pub fn new(dir: &Path, floor_bytes: u64, slack_bytes: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            floor_bytes,
            slack_bytes,
            below: AtomicBool::new(false),
        }
    }

    /// `[state] min_free_bytes`.
    pub fn floor_bytes(&self) -> u64 {
        self.floor_bytes
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn slack_path(&self) -> PathBuf {
        self.dir.join(SLACK_FILE)
    }

    /// Free bytes on the state dir's filesystem, for an unprivileged writer.
    pub fn free_bytes(&self) -> Result<u64, HeadroomError> {
        free_bytes(&self.dir).map_err(|error| HeadroomError::Statvfs {
            dir: self.dir.clone(),
            error,
        })
    }

    /// Free space, floor and slack now; logs when the free space crosses the floor.
    pub fn status(&self) -> Result<DiskStatus, HeadroomError> {
        let free_bytes = self.free_bytes()?;
        let slack_bytes = std::fs::symlink_metadata(self.slack_path()).map_or(0, |m| m.len());
        let status = DiskStatus {
            free_bytes,
            floor_bytes: self.floor_bytes,
            slack_bytes,
        };
        let below = status.below_floor();
        if self.below.swap(below, Ordering::Relaxed) != below {
            if below {
                tracing::warn!(
                    dir = %self.dir.display(),
                    free_bytes,
                    floor_bytes = self.floor_bytes,
                    "state filesystem below its free-space floor: new jobs and image imports are refused"
                );
            } else {
                tracing::info!(
                    dir = %self.dir.display(),
                    free_bytes,
                    floor_bytes = self.floor_bytes,
                    "state filesystem above its free-space floor again"
                );
            }
        }
        Ok(status)
    }

    /// `Err(BelowFloor)` while the free space is below the floor.
    pub fn check_floor(&self) -> Result<(), HeadroomError> {
        let status = self.status()?;
        if status.below_floor() {
            return Err(HeadroomError::BelowFloor {
                dir: self.dir.clone(),
                free: status.free_bytes,
                floor: status.floor_bytes,
            });
        }
        Ok(())
    }

    /// Deletes the slack file so the database can use its space; true when there was one.
    pub fn release(&self) -> bool {
        let path = self.slack_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(),
                    "state filesystem full: released the state database's slack"
                );
                true
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "cannot release the state database's slack");
                false
            }
        }
    }

    /// Whether the slack is missing (released, or never made) while one is configured.
    pub fn released(&self) -> bool {
        self.slack_bytes > 0 && std::fs::symlink_metadata(self.slack_path()).is_err()
    }

    /// Makes the slack file when it is missing and the filesystem has room for it with the
    /// floor (or, with no floor, its own size again) left free; a file of another size (the
    /// config changed) is replaced, and with no slack configured one is removed. Returns
    /// whether the slack is in place.
    pub fn replenish(&self) -> Result<bool, HeadroomError> {
        let path = self.slack_path();
        let have = std::fs::symlink_metadata(&path).ok();
        if self.slack_bytes == 0 {
            if have.is_some() {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(true);
        }
        if have.as_ref().is_some_and(|m| m.len() == self.slack_bytes) {
            return Ok(true);
        }
        let slack_err = |error| HeadroomError::Slack {
            path: path.clone(),
            error,
        };
        let held = have.map_or(0, |m| m.len());
        let free = self.free_bytes()?.saturating_add(held);
        let keep = self.floor_bytes.max(self.slack_bytes);
        if free < self.slack_bytes.saturating_add(keep) {
            return Ok(false);
        }
        let tmp = self.dir.join(format!("{SLACK_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let made = (|| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            allocate(&file, self.slack_bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(err) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(slack_err(err));
        }
        tracing::info!(path = %path.display(), bytes = self.slack_bytes, "state database slack in place");
        Ok(true)
    }
}

/// Gives `file` `len` bytes of real disk space (a sparse file where the filesystem cannot).
fn allocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(off) = libc::off_t::try_from(len) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // Written out, so the blocks are held all the same.
        use std::io::Write;
        let mut file = file;
        let chunk = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        return Ok(());
    }
    Err(err)
}

/// Free bytes of the file system holding `path`, for an unprivileged writer.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let headroom = Headroom::new(dir.path(), 0, 1 << 20);
        assert!(headroom.released(), "not made yet");
        assert!(headroom.replenish().unwrap());
        let meta = std::fs::metadata(dir.path().join(SLACK_FILE)).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert!(!headroom.released());
        assert_eq!(headroom.status().unwrap().slack_bytes, 1 << 20);
        assert!(headroom.release());
        assert!(!headroom.release(), "released once");
        assert!(headroom.released());
        assert!(headroom.replenish().unwrap());
        assert!(!headroom.released());
    }

    #[test]
    fn the_floor_refuses_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        Headroom::new(dir.path(), 0, 0).check_floor().unwrap();
        let err = Headroom::new(dir.path(), u64::MAX, 0)
            .check_floor()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("state.min_free_bytes: "),
            "{err}"
        );
        // No room for the slack above the floor: it is not made.
        let headroom = Headroom::new(dir.path(), u64::MAX / 2, 1 << 20);
        assert!(!headroom.replenish().unwrap());
        assert!(!dir.path().join(SLACK_FILE).exists());
    }

    #[test]
    fn no_slack_configured_removes_an_old_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SLACK_FILE), b"x").unwrap();
        assert!(Headroom::new(dir.path(), 0, 0).replenish().unwrap());
        assert!(!dir.path().join(SLACK_FILE).exists());
    }
}
