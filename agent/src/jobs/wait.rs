//! Event-driven waits: a [`Waiter`] sleeps in one `poll(2)` on an inotify descriptor (files the
//! shim and the runtime write or remove: `exit.json`, `container.pid`, runc's `exec.fifo` and
//! `state.json`) and a pidfd (`pidfd_open(2)`: the shim's exit, also of a shim this agent did
//! not start, found after a restart). The caller re-checks its condition after every wakeup;
//! the events only say when to look, so a missed or spurious one costs a check, not a wrong
//! answer.
//!
//! The timeout given to [`Waiter::wait`] bounds each sleep; callers keep it short only where no
//! event exists (a runtime whose state is known only by asking it, see
//! [`super::JobRuntime::state_dir`]). Without inotify (its limit reached) a waiter sleeps
//! [`NO_EVENTS_PAUSE`] at most, the old polling as a fallback.
//!
//! Closing an inotify descriptor that has (or had) watches waits for the kernel's fsnotify
//! mark reaper and an SRCU grace period: 8 ms at the median, up to 20 ms, on the CI machine
//! kind, more than the rest of a StartJob's own work. A dropped waiter therefore hands its
//! descriptor to one background thread that closes it (`close_later`); the caller returns
//! at once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;
use std::time::Duration;

/// The longest sleep of a waiter that has no inotify descriptor.
pub const NO_EVENTS_PAUSE: Duration = Duration::from_millis(10);

/// The events that wake a waiter on a watched dir: a file made (`open(O_CREAT)`), written and
/// closed, renamed into it, or removed.
const DIR_EVENTS: u32 =
    libc::IN_CREATE | libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_DELETE | libc::IN_ONLYDIR;

/// Waits on file events and one process's exit (see the module doc).
#[derive(Debug)]
pub struct Waiter {
    inotify: Option<OwnedFd>,
    pidfd: Option<OwnedFd>,
    watched: Vec<PathBuf>,
    exited: bool,
}

impl Default for Waiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Waiter {
    /// A waiter watching nothing yet.
    pub fn new() -> Self {
        // SAFETY: inotify_init1(2) has no memory preconditions; a descriptor >= 0 is ours.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        let inotify = if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor no one else owns.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no inotify: waits poll");
            None
        };
        Self {
            inotify,
            pidfd: None,
            watched: Vec::new(),
            exited: false,
        }
    }

    /// Watches `dir` (files made, renamed in, written, removed); false when it cannot (it does
    /// not exist yet, or there is no inotify). Watching a dir twice is a no-op.
    pub fn watch_dir(&mut self, dir: &Path) -> bool {
        if self.watched.iter().any(|d| d == dir) {
            return true;
        }
        let Some(inotify) = &self.inotify else {
            return false;
        };
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), DIR_EVENTS) };
        if wd < 0 {
            return false;
        }
        self.watched.push(dir.to_owned());
        true
    }

    /// Watches process `pid`'s exit; false when it cannot (it is gone already, or the kernel
    /// has no pidfd: before 5.3). The caller checks that `pid` is still the process it means
    /// after this returns true (a pidfd pins the process, so that check cannot race).
    pub fn watch_pid(&mut self, pid: i32) -> bool {
        // SAFETY: pidfd_open(2) with flags 0 has no memory preconditions.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let Ok(fd) = i32::try_from(fd) else {
            return false;
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: a fresh descriptor no one else owns.
        self.pidfd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        self.exited = false;
        true
    }

    /// Takes over a pidfd opened elsewhere (the launcher opens it before the shim can be
    /// reaped).
    pub fn watch_pidfd(&mut self, pidfd: OwnedFd) {
        self.pidfd = Some(pidfd);
        self.exited = false;
    }

    /// Whether a process is watched.
    pub fn has_pid(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Whether the watched process has exited (known from a wakeup, or checked now). Looks at
    /// the pidfd only: file events that arrived meanwhile stay queued for the next
    /// [`Self::wait`], which must not sleep through them.
    pub fn exited(&mut self) -> bool {
        if !self.exited {
            if let Some(pidfd) = &self.pidfd {
                let mut fd = libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd struct for the call; a zero timeout never blocks.
                let n = unsafe { libc::poll(&mut fd, 1, 0) };
                self.exited = n > 0 && fd.revents != 0;
            }
        }
        self.exited
    }

    /// Sleeps until a watched event or `timeout` (never longer than [`NO_EVENTS_PAUSE`] without
    /// inotify). Drains the file events; returns true when woken by one.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let timeout = if self.inotify.is_some() {
            timeout
        } else {
            timeout.min(NO_EVENTS_PAUSE)
        };
        self.poll(timeout)
    }

    fn poll(&mut self, timeout: Duration) -> bool {
        let mut fds = Vec::with_capacity(2);
        for fd in [&self.inotify, &self.pidfd].into_iter().flatten() {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return false;
        }
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // A sub-millisecond timeout rounds up: never spin.
        let millis = if millis == 0 && !timeout.is_zero() {
            1
        } else {
            millis
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if n <= 0 {
            return false;
        }
        let mut woke = false;
        let mut i = 0;
        if let Some(inotify) = &self.inotify {
            if fds[i].revents & libc::POLLIN != 0 {
                drain(inotify);
                woke = true;
            }
            i += 1;
        }
        if self.pidfd.is_some() && fds[i].revents != 0 {
            self.exited = true;
            woke = true;
        }
        woke
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(inotify) = self.inotify.take() {
            if !self.watched.is_empty() {
                close_later(inotify);
            }
        }
    }
}

/// Closes `fd` on the closer thread (see the module doc), or here when that thread cannot
/// be started.
fn close_later(fd: OwnedFd) {
    static CLOSER: OnceLock<Option<Sender<OwnedFd>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        let spawned = std::thread::Builder::new()
            .name("inotify-closer".into())
            .stack_size(64 * 1024)
            .spawn(move || rx.into_iter().for_each(drop));
        match spawned {
            Ok(_) => Some(tx),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the inotify closer thread; waits close their descriptors themselves");
                None
            }
        }
    });
    if let Some(tx) = closer {
        // A send fails only if the thread ended, which it does not; the fd is closed then.
        let _ = tx.send(fd);
    }
}

/// Reads every queued inotify event (their contents do not matter: see the module doc).
fn drain(inotify: &OwnedFd) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: read(2) into a buffer we own, of its length.
        let n = unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn file_events_and_process_exits_wake_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let mut waiter = Waiter::new();
        assert!(waiter.watch_dir(dir.path()));
        assert!(!waiter.wait(Duration::from_millis(20)), "nothing happened");
        let path = dir.path().join("exit.json");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(path, b"{}").unwrap();
        });
        let at = Instant::now();
        assert!(waiter.wait(Duration::from_secs(10)));
        assert!(at.elapsed() < Duration::from_secs(5));
        writer.join().unwrap();

        let mut child = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        let mut waiter = Waiter::new();
        assert!(waiter.watch_pid(child.id() as i32));
        assert!(!waiter.exited());
        assert!(waiter.wait(Duration::from_secs(10)));
        assert!(waiter.exited());
        child.wait().unwrap();
    }

    #[test]
    fn a_dropped_waiter_closes_its_inotify_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let mut waiter = Waiter::new();
        assert!(waiter.watch_dir(dir.path()));
        let fd = waiter.inotify.as_ref().unwrap().as_raw_fd();
        let link = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let is_inotify =
            || std::fs::read_link(&link).is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify");
        assert!(is_inotify());
        drop(waiter);
        // Closed by the closer thread; another test's waiter may reuse the number meanwhile,
        // and closes it again the same way.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_inotify() {
            assert!(Instant::now() < deadline, "fd {fd} was never closed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn asking_whether_the_process_exited_keeps_file_events_for_the_next_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut waiter = Waiter::new();
        assert!(waiter.watch_dir(dir.path()));
        assert!(waiter.watch_pid(child.id() as i32));
        // An event between the caller's last check and its sleep, as runc's removal of
        // `exec.fifo` can fall.
        std::fs::write(dir.path().join("exec.fifo"), b"").unwrap();
        assert!(!waiter.exited());
        let at = Instant::now();
        assert!(
            waiter.wait(Duration::from_secs(10)),
            "the queued event must wake the wait"
        );
        assert!(
            at.elapsed() < Duration::from_secs(5),
            "slept through the event"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
