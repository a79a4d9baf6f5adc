//! The OCI runtime seam: [`JobRuntime`] and its real implementation [`Runc`] (any runc-compatible
//! CLI: `--root`, `run`, `state`, `kill`, `delete`, `list`).
//!
//! Containers are started by the job shim ([`super::shim`]) with [`JobRuntime::run_command`] in
//! the foreground, so the shim learns the exit status; the agent itself only asks for state,
//! sends signals and deletes. Every call is bounded by [`CALL_TIMEOUT`]; a runtime that hangs is
//! killed and reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use super::JobError;

/// Time limit of one runtime call (state, kill, delete, list).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the runtime says about a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    /// `created`, `running`, `paused`, `stopped`.
    pub status: String,
    /// The init process's pid on the host (0 once stopped).
    #[serde(default)]
    pub pid: i64,
}

/// The OCI runtime as the job runner uses it.
pub trait JobRuntime: Send + Sync + std::fmt::Debug {
    /// The command that creates and starts container `id` from `bundle`, writes the init pid to
    /// `pid_file`, and stays in the foreground until the container ends, exiting with its exit
    /// status (128 + signal when killed). The container is kept (in `stopped` state) for the
    /// caller to read its cgroup and then [`Self::delete`] it.
    fn run_command(&self, id: &str, bundle: &Path, pid_file: &Path) -> Command;
    /// The container's state; `Ok(None)` when the runtime does not know it.
    fn state(&self, id: &str) -> Result<Option<ContainerState>, JobError>;
    /// Sends `signal` (`TERM`, `KILL`, ...) to the container's init process.
    fn kill(&self, id: &str, signal: &str) -> Result<(), JobError>;
    /// Deletes the container (force: kills it first if it still runs). Unknown = Ok.
    fn delete(&self, id: &str, force: bool) -> Result<(), JobError>;
    /// The ids of every container the runtime knows (under this root).
    fn list(&self) -> Result<Vec<String>, JobError>;
    /// A cheap answer to "has container `id` (init pid `pid`) been started?" without running
    /// the runtime, when the runtime's state files allow it; `None` = ask [`Self::state`].
    fn started(&self, _id: &str, _pid: i32) -> Option<bool> {
        None
    }
    /// Container `id`'s init pid from the runtime's own state files, once it has created the
    /// container; `None` when they do not say (then the `pid_file` of [`Self::run_command`]
    /// does, a little later).
    fn init_pid(&self, _id: &str) -> Option<i32> {
        None
    }
    /// The dir where the runtime keeps container `id`'s state files, whose changes say when
    /// [`Self::started`] may have changed (watched with inotify during a start, see
    /// [`super::wait`]); `None` = no such files: the start is polled.
    fn state_dir(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

/// runc (or a compatible CLI) with its own state root.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// `binary` with `--root root` on every call.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            root: root.into(),
        }
    }

    /// The runtime's state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// Runs a short call; returns (success, stdout, stderr).
    fn call(&self, what: &str, args: &[&str]) -> Result<(bool, String, String), JobError> {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run_bounded(cmd, CALL_TIMEOUT).map_err(|err| JobError::Runtime {
            what: format!("{} {what}", self.binary.display()),
            message: err.to_string(),
        })?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }

    fn failed(&self, what: &str, stderr: String) -> JobError {
        JobError::Runtime {
            what: format!("{} {what}", self.binary.display()),
            message: stderr,
        }
    }
}

/// True when a runtime error message says the container does not exist.
fn not_found(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("does not exist") || s.contains("not found") || s.contains("no such")
}

impl JobRuntime for Runc {
    fn run_command(&self, id: &str, bundle: &Path, pid_file: &Path) -> Command {
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg("--keep")
            .arg(id);
        cmd
    }

    fn state(&self, id: &str) -> Result<Option<ContainerState>, JobError> {
        let (ok, stdout, stderr) = self.call("state", &["state", id])?;
        if !ok {
            if not_found(&stderr) {
                return Ok(None);
            }
            return Err(self.failed("state", stderr));
        }
        serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|err| self.failed("state", format!("unreadable output: {err}")))
    }

    fn kill(&self, id: &str, signal: &str) -> Result<(), JobError> {
        let (ok, _, stderr) = self.call("kill", &["kill", id, signal])?;
        if ok || not_found(&stderr) || stderr.contains("not running") {
            Ok(())
        } else {
            Err(self.failed("kill", stderr))
        }
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), JobError> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        let (ok, _, stderr) = self.call("delete", args)?;
        if ok || not_found(&stderr) {
            Ok(())
        } else {
            Err(self.failed("delete", stderr))
        }
    }

    /// runc's own rule (libcontainer `runType`): a container whose init lives is `created`
    /// while `<root>/<id>/exec.fifo` exists and `running` once `start` has removed it.
    fn started(&self, id: &str, pid: i32) -> Option<bool> {
        let dir = self.root.join(id);
        if !dir.join("state.json").exists() || !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        Some(!dir.join("exec.fifo").exists())
    }

    /// `init_process_pid` of `<root>/<id>/state.json`, which runc writes (temp file + rename)
    /// before it starts the container. Its `--pid-file` comes only after the start, written
    /// with `O_SYNC`: waiting for that file put a disk flush into every start.
    fn init_pid(&self, id: &str) -> Option<i32> {
        #[derive(Deserialize)]
        struct RuncState {
            init_process_pid: i32,
        }
        let text = std::fs::read(self.root.join(id).join("state.json")).ok()?;
        let state: RuncState = serde_json::from_slice(&text).ok()?;
        (state.init_process_pid > 0).then_some(state.init_process_pid)
    }

    /// `<root>/<id>`: runc makes it with `exec.fifo`, writes `state.json` into it, and removes
    /// `exec.fifo` once the container runs.
    fn state_dir(&self, id: &str) -> Option<PathBuf> {
        Some(self.root.join(id))
    }

    fn list(&self) -> Result<Vec<String>, JobError> {
        let (ok, stdout, stderr) = self.call("list", &["list", "--quiet"])?;
        if !ok {
            return Err(self.failed("list", stderr));
        }
        Ok(stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// Why a bounded runtime call failed (its cause in the message, once).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The program could not be started.
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    /// No thread to wait for it.
    #[error("cannot start a waiter thread: {0}")]
    Waiter(std::io::Error),
    /// Waiting for it failed.
    #[error("cannot wait: {0}")]
    Wait(std::io::Error),
    /// It did not end in time and was killed.
    #[error("no answer within {} s; killed", .0.as_secs())]
    TimedOut(Duration),
}

/// Runs `cmd` with captured output, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<std::process::Output, CallError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(CallError::Start)?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("runtime-call".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // The receiver may have given up (timeout); nothing to do then.
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(CallError::Waiter)?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(err)) => Err(CallError::Wait(err)),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on a pid we spawned and have not reaped yet (the waiter thread
                // still owns it), so it cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Err(CallError::TimedOut(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_calls_time_out_and_report() {
        let mut cmd = Command::new("sleep");
        cmd.arg("5");
        let err = run_bounded(cmd, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, CallError::TimedOut(_)), "{err}");
        let mut cmd = Command::new("echo");
        cmd.arg("hi");
        let out = run_bounded(cmd, Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let err = run_bounded(Command::new("/nonexistent/runc"), CALL_TIMEOUT).unwrap_err();
        assert!(matches!(err, CallError::Start(_)), "{err}");
    }

    #[test]
    fn started_follows_runcs_exec_fifo_rule() {
        let dir = tempfile::tempdir().unwrap();
        let runc = Runc::new("/usr/sbin/runc", dir.path());
        let me = std::process::id() as i32;
        assert_eq!(runc.started("c1", me), None, "no state yet: ask runc");
        let c = dir.path().join("c1");
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join("state.json"), "{}").unwrap();
        std::fs::write(c.join("exec.fifo"), "").unwrap();
        assert_eq!(runc.started("c1", me), Some(false), "created, not started");
        std::fs::remove_file(c.join("exec.fifo")).unwrap();
        assert_eq!(runc.started("c1", me), Some(true));
        assert_eq!(runc.started("c1", i32::MAX), None, "init gone: ask runc");
    }

    #[test]
    fn init_pid_comes_from_runcs_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let runc = Runc::new("/usr/sbin/runc", dir.path());
        assert_eq!(runc.init_pid("c1"), None, "no container yet");
        let c = dir.path().join("c1");
        std::fs::create_dir(&c).unwrap();
        std::fs::write(
            c.join("state.json"),
            "{\"id\":\"c1\",\"init_process_pid\":4242}",
        )
        .unwrap();
        assert_eq!(runc.init_pid("c1"), Some(4242));
        std::fs::write(c.join("state.json"), "{\"init_process_pid\":0}").unwrap();
        assert_eq!(runc.init_pid("c1"), None, "no init");
        std::fs::write(c.join("state.json"), "{\"init_process_pid\":").unwrap();
        assert_eq!(runc.init_pid("c1"), None, "torn write");
    }

    #[test]
    fn missing_container_messages() {
        assert!(not_found("container \"x\" does not exist"));
        assert!(!not_found("permission denied"));
    }

    #[test]
    fn runc_state_of_an_unknown_container_is_none() {
        let dir = tempfile::tempdir().unwrap();
        // runc comes from packaging/setup-debian.sh.
        let runc = Runc::new("/usr/sbin/runc", dir.path());
        assert_eq!(runc.state("nope").unwrap(), None);
        assert!(runc.list().unwrap().is_empty());
        runc.delete("nope", true).unwrap();
    }
}
