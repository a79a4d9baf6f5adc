//! Persistent network namespaces, as `ip netns add` makes them: a new namespace is unshared
//! on a short-lived thread and its `nsfs` file bind-mounted onto a file of ours, so it lives
//! without any process in it until [`remove`] unmounts it. runc joins it through the OCI
//! spec's namespace path; the CNI plugins are given the same path.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::NetError;

/// Makes a new network namespace at `path` (whose parent must exist). A file already there is
/// an error: a namespace of the same name was not removed.
pub fn create(path: &Path) -> Result<(), NetError> {
    let failed = |error: io::Error| NetError::Netns {
        path: path.to_owned(),
        error,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(failed)?;
    let target = c_path(path).map_err(failed)?;
    // unshare(CLONE_NEWNET) changes only the calling thread's namespace: a thread of its own
    // does it, so no thread of the agent ever changes namespace.
    let bound = std::thread::Builder::new()
        .name("netns".into())
        .stack_size(64 * 1024)
        .spawn(move || bind_new_namespace(&target))
        .map_err(failed)?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if let Err(error) = bound {
        // Ignored: the error to report is the bind's.
        let _ = std::fs::remove_file(path);
        return Err(failed(error));
    }
    Ok(())
}

/// Unshares a network namespace on this thread and bind-mounts it onto `target`.
fn bind_new_namespace(target: &CString) -> io::Result<()> {
    // SAFETY: plain system calls with valid C strings; they affect only this thread, which
    // ends right after.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        let source = c"/proc/thread-self/ns/net";
        if libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes the namespace at `path`: unmounted (lazily: a plugin may still hold it) and the
/// file removed. Nothing there is not an error.
pub fn remove(path: &Path) -> Result<(), NetError> {
    let failed = |error: io::Error| NetError::Netns {
        path: path.to_owned(),
        error,
    };
    let target = c_path(path).map_err(failed)?;
    // SAFETY: a valid C string; umount2 does not keep it.
    let unmounted = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if unmounted != 0 {
        let error = io::Error::last_os_error();
        // EINVAL: not a mount point (never bound, or unmounted already); ENOENT: no file.
        if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(failed(error));
        }
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(failed(error)),
        _ => Ok(()),
    }
}

/// Whether `path` is a bound namespace (a mount of `nsfs`), not just a file.
pub fn is_bound(path: &Path) -> bool {
    statfs_type(path) == Some(NSFS_MAGIC)
}

/// `NSFS_MAGIC` from `linux/magic.h`.
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn statfs_type(path: &Path) -> Option<i64> {
    let path = c_path(path).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid C string and a buffer of the right type; read only on success.
    let ok = unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) } == 0;
    // SAFETY: statfs succeeded, so the buffer is initialized.
    #[allow(clippy::useless_conversion)]
    ok.then(|| i64::from(unsafe { stat.assume_init() }.f_type))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN): the agent's unit tests run as root on CI.
    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn create_then_remove_a_namespace() {
        if !is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job-1");
        create(&path).unwrap();
        assert!(is_bound(&path));
        // A second one of the same name is refused, and the first is left alone.
        assert!(create(&path).is_err());
        assert!(is_bound(&path));
        remove(&path).unwrap();
        assert!(!path.exists());
        // Removing it again (or one never made) is fine.
        remove(&path).unwrap();
    }

    #[test]
    fn a_plain_file_is_not_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, b"").unwrap();
        assert!(!is_bound(&path));
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}
