//! Starting job shims without an exec on the StartJob path.
//!
//! Exec'ing the agent binary as a shim costs ~6.5 ms on this 2-core VM (mapping ~100 MB,
//! relocating it and binding its TPM and crypto libraries), a sixth of a whole `runc run`. So
//! the [`ShimLauncher`] keeps one *standby* shim (`fog-agent internal job-shim-standby`) that
//! has already been exec'd and waits on a pipe: a StartJob hands it the job's [`ShimArgs`] as
//! one JSON line, and a new standby is exec'd off the critical path, once the start is over. When
//! there is no standby (two starts at once, or it died), the shim is exec'd directly
//! (`internal job-shim ARGS`); both end in the same [`super::shim::main`].
//!
//! A standby whose agent dies reads EOF and exits. Shims run in their job dir, which is how a
//! standby-started shim is recognized after an agent restart ([`super::shim::shim_alive`]).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use super::shim::{ShimArgs, SHIM_SUBCOMMAND, STANDBY_SUBCOMMAND};

/// Starts job shims: from the standby when there is one, by exec otherwise.
#[derive(Debug)]
pub struct ShimLauncher {
    exe: PathBuf,
    standby: Mutex<Option<Child>>,
}

impl ShimLauncher {
    /// Shims are `exe internal job-shim[-standby]`; the first standby is started now.
    pub fn new(exe: PathBuf) -> Arc<Self> {
        let launcher = Arc::new(Self {
            exe,
            standby: Mutex::new(None),
        });
        launcher.replenish();
        launcher
    }

    /// Starts the shim of one job, its stderr going to `shim_log`; the caller reaps the child
    /// and calls [`Self::replenish_in_background`] once the start is over.
    pub fn launch(&self, args: &ShimArgs, shim_log: File) -> std::io::Result<Child> {
        let standby = self
            .standby
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = standby {
            match hand_over(&mut child, args) {
                Ok(()) => return Ok(child),
                Err(err) => {
                    tracing::debug!(error = %err, "standby shim unusable; exec'ing one");
                    // Ignored: it is being replaced; kill fails only if it already ended.
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        self.exec_shim(args, shim_log)
    }

    /// The pid of the standby, if one is waiting.
    pub fn standby_pid(&self) -> Option<u32> {
        self.standby
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Child::id)
    }

    /// Starts a standby in the background if there is none. Called once a start is over, so
    /// the exec does not compete with the runtime for the CPU.
    pub fn replenish_in_background(self: &Arc<Self>) {
        let launcher = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("shim-standby".into())
            .stack_size(64 * 1024)
            .spawn(move || launcher.replenish());
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start a standby shim thread");
        }
    }

    /// Starts a standby if there is none.
    pub fn replenish(&self) {
        let mut slot = self.standby.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = slot.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return;
            }
        }
        let spawned = self
            .shim_command()
            .arg(STANDBY_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => *slot = Some(child),
            Err(err) => {
                *slot = None;
                tracing::warn!(exe = %self.exe.display(), error = %err, "cannot start a standby shim; shims are exec'd per job");
            }
        }
    }

    fn shim_command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("internal").env("FOG_LOG", "info");
        cmd
    }

    fn exec_shim(&self, args: &ShimArgs, shim_log: File) -> std::io::Result<Child> {
        self.shim_command()
            .arg(SHIM_SUBCOMMAND)
            .arg("--job-dir")
            .arg(&args.job_dir)
            .arg("--id")
            .arg(&args.id)
            .arg("--runtime")
            .arg(&args.runtime)
            .arg("--runtime-root")
            .arg(&args.runtime_root)
            .arg("--cgroups-path")
            .arg(&args.cgroups_path)
            .arg("--log-max-bytes")
            .arg(args.log_max_bytes.to_string())
            .current_dir(&args.job_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(shim_log)
            .spawn()
    }
}

impl Drop for ShimLauncher {
    /// Closes the standby's stdin (it exits on EOF) and reaps it.
    fn drop(&mut self) {
        let slot = self
            .standby
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = slot.take() {
            drop(child.stdin.take());
            // Ignored: nothing to do about a standby that cannot be reaped.
            let _ = child.wait();
        }
    }
}

/// Gives a standby its job: one JSON line, then EOF.
fn hand_over(child: &mut Child, args: &ShimArgs) -> std::io::Result<()> {
    if child.try_wait()?.is_some() {
        return Err(std::io::Error::other("the standby shim has exited"));
    }
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the standby shim has no stdin"))?;
    let mut line = serde_json::to_vec(args).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // One write of a few hundred bytes: below PIPE_BUF, so it is atomic and never blocks.
    stdin.write_all(&line)
}
