//! The supervisor seam: [`Supervisor`] starts a job's shim and answers whether it lives, next
//! to [`super::JobRuntime`] (which the shim runs the container with, and the manager asks for
//! state, signals and deletes). The real one, [`ShimSupervisor`], starts `fog-agent internal
//! job-shim` processes through the [`ShimLauncher`] and recognizes them by `shim.pid`; the
//! tests' fake runtime implements both seams in-process (`jobs::fake`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::launcher::ShimLauncher;
use super::shim::{self, ShimArgs};

/// A shim that was started.
#[derive(Debug, Default)]
pub struct Launched {
    /// Its pid, when it is a process.
    pub pid: Option<i32>,
    /// A pidfd of it, opened before it could be reaped (so never of a reused pid).
    pub pidfd: Option<OwnedFd>,
}

/// Starts job shims and tells whether they live.
pub trait Supervisor: Send + Sync + std::fmt::Debug {
    /// Starts the shim of a prepared job (its dir holds the bundle). `on_exit` runs once the
    /// shim has ended, while this agent lives (after a restart nothing calls it: the sampler
    /// notices the end).
    fn launch(
        &self,
        args: &ShimArgs,
        on_exit: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Launched>;
    /// Whether job `id`'s shim lives.
    fn alive(&self, id: &str, job_dir: &Path) -> bool;
    /// The pid of job `id`'s live shim, to wait for its exit.
    fn pid(&self, id: &str, job_dir: &Path) -> Option<i32>;
    /// Kills job `id`'s shim (and what it started) if it lives.
    fn kill(&self, id: &str, job_dir: &Path);
    /// Called after a start is over (the real one exec's its next standby then).
    fn after_start(&self) {}
}

/// The real shims: `fog-agent internal job-shim` processes (see [`super::shim`]).
#[derive(Debug)]
pub struct ShimSupervisor {
    launcher: Arc<ShimLauncher>,
}

impl ShimSupervisor {
    /// Shims are `exe internal job-shim[-standby]` (the first standby starts now).
    pub fn new(exe: PathBuf) -> Self {
        Self {
            launcher: ShimLauncher::new(exe),
        }
    }
}

fn pidfd_of_child(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with flags 0 has no memory preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a fresh descriptor no one else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Supervisor for ShimSupervisor {
    fn launch(
        &self,
        args: &ShimArgs,
        on_exit: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Launched> {
        let dir = &args.job_dir;
        let shim_log = std::fs::File::create(dir.join(shim::SHIM_LOG))?;
        let mut child = self.launcher.launch(args, shim_log)?;
        let pid = child.id();
        // Our unreaped child: the pid cannot have been reused yet.
        let pidfd = pidfd_of_child(pid);
        shim::write_pid_file(&dir.join(shim::SHIM_PID_FILE), pid)?;
        // Reap the shim when it ends (while this agent lives; after a restart init does).
        let reaper = std::thread::Builder::new()
            .name("job-shim-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Ignored: the shim's own status is not the job's (that is in exit.json).
                let _ = child.wait();
                on_exit();
            });
        if let Err(err) = reaper {
            tracing::warn!(error = %err, "cannot start a reaper thread; the shim stays a zombie until the agent exits");
        }
        Ok(Launched {
            pid: i32::try_from(pid).ok(),
            pidfd,
        })
    }

    fn alive(&self, id: &str, job_dir: &Path) -> bool {
        self.pid(id, job_dir).is_some()
    }

    fn pid(&self, id: &str, job_dir: &Path) -> Option<i32> {
        shim::read_pid(&job_dir.join(shim::SHIM_PID_FILE))
            .filter(|pid| shim::shim_alive(*pid, id, job_dir))
    }

    fn kill(&self, id: &str, job_dir: &Path) {
        if let Some(pid) = self.pid(id, job_dir) {
            // SAFETY: kill(2); the pid was checked to be this job's shim just now. The shim
            // leads its own session and process group (setsid), so -pid also reaches the
            // runtime process it started.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    fn after_start(&self) {
        self.launcher.replenish_in_background();
    }
}
