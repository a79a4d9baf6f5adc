//! A job's scratch space: `<job dir>/scratch`, mounted read-write at `/scratch` in its
//! container, and how it is held to `resources.scratch_bytes`.
//!
//! - `[jobs] scratch_limit = "filesystem"` (the default): the scratch dir is the mount point of
//!   the job's own ext4 filesystem, kept in a sparse image file `<job dir>/scratch.img` and
//!   loop-mounted `nosuid,nodev,noatime`. The limit holds at the moment of the write (`ENOSPC`,
//!   as on a full disk), not at the next poll, so a job cannot fill the host's disk between two
//!   telemetry ticks. The image's space is allocated when the job starts (`fallocate`: extents,
//!   no data written), so the disk the job was sold is there: a start it does not fit fails at
//!   once, rather than the job meeting I/O errors when the host's disk fills up under a sparse
//!   image. The filesystem has no journal and its inode tables are not zeroed
//!   (`noinit_itable`: the allocated blocks read as zeros anyway), its data does not outlive the
//!   job, its root belongs to the job's user, and it is unmounted and deleted when the job
//!   ends. It holds at least `scratch_bytes`: the
//!   image is sized for ext4's metadata, which leaves at most 1/32 + 2 MiB more (see
//!   [`image_bytes`]), and the size check below still stops a job holding more than
//!   `scratch_bytes`. Made with `mkfs.ext4` (e2fsprogs) and util-linux `mount` (both on every
//!   Debian host, and declared by the package), exec'd: no crate makes ext4. It adds to the
//!   start of a job with scratch a median 15.5 ms for 1 GiB (12-24 ms over 10 runs) and 44 ms
//!   for 10 GiB (29-54 ms: mkfs writes more group metadata), and its removal 6.5 / 21 ms to
//!   the end.
//! - `"polled"`: a plain dir on the jobs dir's file system; the telemetry loop stops a job
//!   whose scratch dir has grown past its size, every entry counted (directories, symlinks and
//!   files, each by the larger of its length and its allocated blocks), or holds more than
//!   `[jobs] scratch_max_inodes` entries (every 5th tick). For hosts without loop devices (the
//!   agent in an LXC container, a locked-down device cgroup).
//!
//! A job with `scratch_bytes = 0` gets no scratch dir on the host at all, in both modes: its
//! `/scratch` is an empty read-only tmpfs ([`super::bundle`]), so it has no writable host path.
//!
//! Under systemd the unit's `PrivateMounts=yes` puts the agent, its shims and so the mounts in
//! the agent's own mount namespace. After an agent restart the new agent does not see the old
//! mounts: at a job's end it then removes the (empty, to it) scratch dir and unlinks the image,
//! and the space comes back when the job's last process, and with it the old namespace, is
//! gone (the loop device is auto-cleared with its last mount).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::shim::SCRATCH_DIR;
use crate::config::ScratchLimit;

/// Why a scratch dir could not be made or removed (each message carries its cause once; no
/// `source()` repeats it).
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// A file or dir operation.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        /// What was done, e.g. `create`.
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("cannot make the scratch filesystem: {0}")]
    Mkfs(ToolError),
    /// mount failed.
    #[error(
        "cannot mount the scratch filesystem: {0} (on a host without loop devices, set \
         [jobs] scratch_limit = \"polled\")"
    )]
    Mount(ToolError),
    /// The path cannot be passed to the kernel.
    #[error("{} has a NUL byte", .0.display())]
    NulInPath(PathBuf),
    /// Still busy after a lazy unmount.
    #[error("cannot unmount {}: busy", .0.display())]
    Busy(PathBuf),
}

/// A tool (mkfs.ext4, mount) that failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be run.
    #[error("cannot run {program}: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// It ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ScratchError + 'a {
    move |error| ScratchError::Io {
        action,
        path: path.to_owned(),
        error,
    }
}

/// The scratch filesystem's image file in a job dir.
pub const SCRATCH_IMAGE: &str = "scratch.img";
const MIB: u64 = 1 << 20;

/// Size of the image file for `scratch_bytes` of usable space: ext4 (4 KiB blocks, 16 KiB per
/// inode, no journal, no reserved blocks) keeps ~1.6% for inode tables plus ~1 MiB of fixed
/// metadata; 1/32 + 2 MiB covers that with room to spare: at least `scratch_bytes` free,
/// measured from 1 MiB to 100 GiB (the tests check 1 MiB to 1 GiB: every size they make is
/// allocated on the CI machine's disk).
pub fn image_bytes(scratch_bytes: u64) -> u64 {
    let bytes = scratch_bytes
        .saturating_add(scratch_bytes / 32)
        .saturating_add(2 * MIB);
    bytes.div_ceil(4096).saturating_mul(4096)
}

/// Makes `<job_dir>/scratch` for a job of `scratch_bytes`, owned by `owner` (uid, gid), mode
/// 0700; with [`ScratchLimit::Filesystem`], mounts its filesystem on it. A job of
/// `scratch_bytes = 0` gets none (`Ok(None)`): nothing on the host it could write to.
pub fn make(
    job_dir: &Path,
    scratch_bytes: u64,
    owner: (u32, u32),
    limit: ScratchLimit,
) -> Result<Option<PathBuf>, ScratchError> {
    if scratch_bytes == 0 {
        return Ok(None);
    }
    let dir = job_dir.join(SCRATCH_DIR);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io("create", &dir))?;
    if limit == ScratchLimit::Filesystem {
        mount_filesystem(job_dir, &dir, scratch_bytes, owner)?;
    }
    // On the mounted filesystem this is its root (mkfs made it 0755).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("set the mode of", &dir))?;
    std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1)).map_err(io("chown", &dir))?;
    Ok(Some(dir))
}

fn mount_filesystem(
    job_dir: &Path,
    dir: &Path,
    scratch_bytes: u64,
    (uid, gid): (u32, u32),
) -> Result<(), ScratchError> {
    let image = job_dir.join(SCRATCH_IMAGE);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&image)
        .map_err(io("create", &image))?;
    allocate(&file, image_bytes(scratch_bytes)).map_err(io("allocate", &image))?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-T", "default", "-b", "4096", "-m", "0"])
        .args(["-O", "^has_journal,^resize_inode"])
        .arg("-E")
        .arg(format!(
            "lazy_itable_init=1,nodiscard,root_owner={uid}:{gid}"
        ))
        .arg(&image))
    .map_err(ScratchError::Mkfs)?;
    run(Command::new("mount")
        .args([
            "-t",
            "ext4",
            "-o",
            "loop,nosuid,nodev,noatime,noinit_itable",
        ])
        .arg(&image)
        .arg(dir))
    .map_err(ScratchError::Mount)?;
    // mkfs's lost+found is for fsck, which never runs on a job's scratch.
    let _ = std::fs::remove_dir(dir.join("lost+found"));
    Ok(())
}

/// Gives `file` `len` bytes of real disk space (`fallocate`: extents, no data written), so the
/// scratch a job was sold exists when it starts; a host file system that cannot allocate
/// (`EOPNOTSUPP`) gets a sparse file instead, with a warning.
///
/// A size past the file system's free space is refused before anything is allocated: ext4
/// keeps the blocks a failing `fallocate` got before it ran out, so trying would fill the
/// host's disk (and the agent's state store with it) until the file is gone. Should a
/// concurrent writer win the race anyway, the file is emptied at once.
fn allocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let no_room = |detail: String| {
        std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{detail}: the host's disk has less free space than the scratch asks for"),
        )
    };
    let free = free_bytes(file)?;
    if len > free {
        return Err(no_room(format!("{len} bytes asked, {free} free")));
    }
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            tracing::warn!(error = %err, "the jobs dir's file system cannot preallocate; the scratch image is sparse");
            file.set_len(len as u64)
        }
        Some(libc::ENOSPC) => {
            let _ = file.set_len(0);
            Err(no_room(err.to_string()))
        }
        _ => Err(err),
    }
}

/// Free bytes of the file system holding `file`, for an unprivileged writer.
fn free_bytes(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed statvfs is a valid out-parameter; the descriptor is ours.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Runs a tool to its end; its stderr (trimmed) on failure.
fn run(command: &mut Command) -> Result<(), ToolError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = match command.stdin(std::process::Stdio::null()).output() {
        Ok(out) => out,
        Err(error) => return Err(ToolError::Spawn { program, error }),
    };
    if out.status.success() {
        return Ok(());
    }
    Err(ToolError::Failed {
        program,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Whether `dir` is a mount point below `parent` (its own device).
fn is_mounted(dir: &Path, parent: &Path) -> bool {
    match (std::fs::symlink_metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.is_dir() && d.dev() != p.dev(),
        _ => false,
    }
}

/// Removes a job's scratch: unmounts its filesystem (lazily if something still holds it; the
/// loop device goes with the last user), then the dir and the image. Nothing there is fine.
pub fn remove(job_dir: &Path) -> Result<(), ScratchError> {
    let dir = job_dir.join(SCRATCH_DIR);
    if is_mounted(&dir, job_dir) {
        unmount(&dir)?;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &dir)(e)),
    }
    let image = job_dir.join(SCRATCH_IMAGE);
    match std::fs::remove_file(&image) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &image)(e)),
    }
}

fn unmount(dir: &Path) -> Result<(), ScratchError> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| ScratchError::NulInPath(dir.to_owned()))?;
    for flags in [0, libc::MNT_DETACH] {
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(io("unmount", dir)(err));
        }
    }
    Err(ScratchError::Busy(dir.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_sized_above_the_scratch_size_in_whole_blocks() {
        for bytes in [0, 1, MIB, 10 * MIB, 1 << 30, 100 << 30] {
            let image = image_bytes(bytes);
            assert!(image >= bytes + 2 * MIB, "{bytes}");
            assert_eq!(image % 4096, 0);
        }
        assert_eq!(image_bytes(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn polled_scratch_is_a_plain_dir_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let uid = own_ids();
        let scratch = make(dir.path(), 10 * MIB, uid, ScratchLimit::Polled)
            .unwrap()
            .unwrap();
        let meta = std::fs::metadata(&scratch).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(meta.dev(), std::fs::metadata(dir.path()).unwrap().dev());
        assert!(!dir.path().join(SCRATCH_IMAGE).exists());
        remove(dir.path()).unwrap();
        assert!(!scratch.exists());
        remove(dir.path()).unwrap();
    }

    /// Free bytes of the file system at `path`, for an unprivileged writer.
    fn available(path: &Path) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a zeroed statvfs is a valid out-parameter; `c` outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }

    #[test]
    fn filesystem_holds_its_size_and_refuses_more() {
        // Needs root and a loop device, as the agent does (CI runs as root).
        let dir = tempfile::tempdir().unwrap();
        let job_dir = dir.path().join("job");
        std::fs::create_dir(&job_dir).unwrap();
        let size = 8 * MIB;
        let scratch = make(&job_dir, size, (1234, 5678), ScratchLimit::Filesystem)
            .unwrap()
            .unwrap();
        assert!(is_mounted(&scratch, &job_dir));
        let meta = std::fs::metadata(&scratch).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1234, 5678, 0o700)
        );
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "empty, no lost+found"
        );
        let free = available(&scratch);
        assert!(
            free >= size && free <= image_bytes(size),
            "{free} free for {size}"
        );
        // Fill it: the writes stop with ENOSPC, between the size and the image size.
        let mut file = std::fs::File::create(scratch.join("fill")).unwrap();
        let chunk = vec![7u8; 256 * 1024];
        let mut written = 0u64;
        let err = loop {
            use std::io::Write;
            match file.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(err) => break err,
            }
            assert!(
                written <= image_bytes(size),
                "wrote {written}, past the image"
            );
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(written >= size, "only {written} of {size} fit");
        drop(file);
        remove(&job_dir).unwrap();
        assert!(!scratch.exists() && !job_dir.join(SCRATCH_IMAGE).exists());
        remove(&job_dir).unwrap();
    }

    #[test]
    fn filesystems_of_all_sizes_hold_their_size_on_allocated_space() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [MIB, 64 * MIB, 1 << 30].into_iter().enumerate() {
            let job_dir = dir.path().join(format!("job{i}"));
            std::fs::create_dir(&job_dir).unwrap();
            let scratch = make(&job_dir, size, own_ids(), ScratchLimit::Filesystem)
                .unwrap()
                .unwrap();
            let free = available(&scratch);
            let image = std::fs::metadata(job_dir.join(SCRATCH_IMAGE)).unwrap();
            remove(&job_dir).unwrap();
            assert!(free >= size, "{free} free for {size}");
            assert!(free <= size + size / 32 + 2 * MIB, "{free} free for {size}");
            assert!(
                image.blocks() * 512 >= image_bytes(size),
                "the space is allocated"
            );
        }
    }

    #[test]
    fn a_scratch_larger_than_the_free_disk_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let too_big = available(dir.path()) * 2;
        let err = make(dir.path(), too_big, own_ids(), ScratchLimit::Filesystem).unwrap_err();
        assert!(
            err.to_string()
                .contains("less free space than the scratch asks for"),
            "{err}"
        );
        // Refused before allocating: nothing of the disk was taken, even for a moment.
        let image = std::fs::metadata(dir.path().join(SCRATCH_IMAGE)).unwrap();
        assert_eq!(image.blocks(), 0);
        remove(dir.path()).unwrap();
        assert!(!dir.path().join(SCRATCH_IMAGE).exists());
    }

    #[test]
    fn a_zero_scratch_makes_nothing_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        for limit in [ScratchLimit::Polled, ScratchLimit::Filesystem] {
            assert_eq!(make(dir.path(), 0, own_ids(), limit).unwrap(), None);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        remove(dir.path()).unwrap();
    }

    fn own_ids() -> (u32, u32) {
        let meta = std::fs::metadata("/proc/self").unwrap();
        (meta.uid(), meta.gid())
    }
}
