//! The job shim: `fog-agent internal job-shim ...`, one small supervisor process per job (the
//! role containerd-shim and conmon play), exec'd per job or taken from a standby
//! ([`super::launcher`]). The agent starts it and does not need to stay alive:
//!
//! 1. it leaves the agent's session (`setsid`), so signals to the agent's process group or
//!    terminal do not reach it;
//! 2. runs the runtime's `run` in the foreground ([`super::JobRuntime::run_command`]) with the
//!    container's stdout/stderr on pipes, copied into `stdout.log` / `stderr.log`, each capped
//!    at `--log-max-bytes` (later output is dropped and counted, with one marker line), and
//!    writes its pid to `shim.pid`;
//! 3. when the container ends: reads its cgroup one last time (OOM kills, CPU, peak memory),
//!    deletes the container, then writes `exit.json` atomically (write + rename).
//!
//! So the exit status survives an agent restart (the agent reads `exit.json` whenever it finds
//! it), and a dead shim without `exit.json` means the container was lost (the agent removes it).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::runtime::{JobRuntime, Runc};
use crate::cgroup;
use crate::fsroot::FsRoot;

/// `shim.pid`: the shim's pid.
pub const SHIM_PID_FILE: &str = "shim.pid";
/// `container.pid`: the container init's host pid, written by the runtime once created.
pub const CONTAINER_PID_FILE: &str = "container.pid";
/// `exit.json`: the [`ExitRecord`].
pub const EXIT_FILE: &str = "exit.json";
/// The job's standard output.
pub const STDOUT_LOG: &str = "stdout.log";
/// The job's standard error.
pub const STDERR_LOG: &str = "stderr.log";
/// The bundle dir (holds `config.json`).
pub const BUNDLE_DIR: &str = "bundle";
/// The shim's own log (its stderr).
pub const SHIM_LOG: &str = "shim.log";
/// The scratch dir mounted into the container.
pub const SCRATCH_DIR: &str = "scratch";
/// The marker line written once when a log reaches its cap.
pub const TRUNCATED_MARKER: &[u8] = b"\n[fog-agent: log size cap reached; later output dropped]\n";

/// Arguments of `fog-agent internal job-shim` (and the JSON line a standby shim reads).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct ShimArgs {
    /// The job dir (bundle, logs, pid and exit files).
    #[arg(long)]
    pub job_dir: PathBuf,
    /// The container id (= job id).
    #[arg(long)]
    pub id: String,
    /// The runtime binary.
    #[arg(long)]
    pub runtime: PathBuf,
    /// The runtime's state root.
    #[arg(long)]
    pub runtime_root: PathBuf,
    /// The container's `linux.cgroupsPath`.
    #[arg(long)]
    pub cgroups_path: String,
    /// Size cap of each log file.
    #[arg(long)]
    pub log_max_bytes: u64,
}

/// How a container ended, as the shim saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The container was created (the runtime wrote its pid).
    pub started: bool,
    /// The runtime's exit status (the container's; 128 + signal when killed). None when the
    /// runtime could not be run or was killed itself.
    pub exit_code: Option<i32>,
    /// When the container ended (Unix ms).
    pub finished_at_millis: u64,
    /// OOM kills in the container's cgroup.
    pub oom_kills: Option<u64>,
    /// CPU time of the container's cgroup at the end.
    pub cpu_usage_nanos: Option<u64>,
    /// Peak memory of the container's cgroup.
    pub memory_peak_bytes: Option<u64>,
    /// Output bytes dropped past the log cap (both streams).
    pub log_dropped_bytes: u64,
    /// What went wrong with the runtime itself (its last stderr lines when the container never
    /// started), if anything.
    pub error: Option<String>,
}

/// Unix milliseconds now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `contents` to `path` atomically and durably (temp file in the same dir, named after
/// this process so two writers never share one, fsync, rename): for `exit.json`, which must
/// outlive a power loss.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace_file(path, contents, true)
}

/// Writes a pid file atomically (temp file + rename) but without fsync: a pid means nothing
/// after a reboot, and an agent restarted after a crash reads it from the page cache, so the
/// fsync a start paid for it protected nothing.
pub fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    replace_file(path, pid.to_string().as_bytes(), false)
}

fn replace_file(path: &Path, contents: &[u8], durable: bool) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = File::create(&tmp)?;
    file.write_all(contents)?;
    if durable {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads `exit.json` of a job dir, if the shim wrote it.
pub fn read_exit(job_dir: &Path) -> Option<ExitRecord> {
    let text = std::fs::read(job_dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True when process `pid` is a live job shim for job `id` in `job_dir`: an exec'd shim names
/// the id on its command line; a standby-started one runs in its job dir. A reused pid or a
/// zombie does not match.
pub fn shim_alive(pid: i32, id: &str, job_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !args.contains(&SHIM_SUBCOMMAND.as_bytes()) && !args.contains(&STANDBY_SUBCOMMAND.as_bytes())
    {
        return false;
    }
    if args.contains(&id.as_bytes()) {
        return true;
    }
    match (
        std::fs::read_link(format!("/proc/{pid}/cwd")),
        std::fs::canonicalize(job_dir),
    ) {
        (Ok(cwd), Ok(dir)) => cwd == dir,
        _ => false,
    }
}

/// The subcommand of an exec'd shim (`fog-agent internal job-shim ARGS`).
pub const SHIM_SUBCOMMAND: &str = "job-shim";
/// The subcommand of a standby shim (`fog-agent internal job-shim-standby`).
pub const STANDBY_SUBCOMMAND: &str = "job-shim-standby";

/// `fog-agent internal job-shim-standby`: a shim exec'd ahead of its job (see
/// [`super::launcher`]). Reads its [`ShimArgs`] as one JSON line on stdin, moves its stderr to
/// the job's `shim.log` and its working dir to the job dir, then is the job's shim ([`main`]).
/// EOF before a line (the agent went away) exits quietly.
pub fn standby_main() -> ExitCode {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) => return ExitCode::SUCCESS,
        Ok(_) => {}
        Err(err) => {
            tracing::error!(error = %err, "standby shim: cannot read its job");
            return ExitCode::FAILURE;
        }
    }
    let args: ShimArgs = match serde_json::from_str(&line) {
        Ok(args) => args,
        Err(err) => {
            tracing::error!(error = %err, "standby shim: unreadable job arguments");
            return ExitCode::FAILURE;
        }
    };
    match open_log(&args.job_dir.join(SHIM_LOG)) {
        // SAFETY: dup2(2) onto stderr of a descriptor we own; `log` is closed afterwards and
        // fd 2 keeps the file open.
        Ok(log) => unsafe {
            libc::dup2(log.as_raw_fd(), libc::STDERR_FILENO);
        },
        Err(err) => tracing::warn!(error = %err, "standby shim: cannot open shim.log"),
    }
    if let Err(err) = std::env::set_current_dir(&args.job_dir) {
        // Without it the shim is still a working supervisor; only recognizing it after an
        // agent restart fails (its job is then recorded as lost, not left untracked).
        tracing::error!(error = %err, dir = %args.job_dir.display(), "standby shim: cannot enter the job dir");
    }
    main(&args)
}

/// Copies `src` to `dst` until EOF, keeping `dst` at most `cap` bytes (plus one marker line);
/// returns the bytes dropped. Each chunk is written as it arrives (no buffering), so readers
/// of the file see output at once.
pub fn copy_capped(mut src: impl Read, mut dst: File, cap: u64) -> u64 {
    let mut written = dst.metadata().map_or(0, |m| m.len());
    let mut dropped = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = usize::try_from(cap.saturating_sub(written)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take > 0 {
            if dst.write_all(&buf[..take]).is_err() {
                dropped += n as u64;
                continue;
            }
            written += take as u64;
        }
        if take < n {
            if dropped == 0 {
                // Ignored error: the marker is a courtesy; the drop is counted either way.
                let _ = dst.write_all(TRUNCATED_MARKER);
            }
            dropped += (n - take) as u64;
        }
    }
    dropped
}

fn open_log(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The shim's main: never panics, always tries to leave `exit.json` behind.
pub fn main(args: &ShimArgs) -> ExitCode {
    close_inherited_on_exec();
    // SAFETY: setsid(2) has no memory-safety preconditions; it fails harmlessly (EPERM) when we
    // already lead a process group.
    unsafe { libc::setsid() };
    let runc = Runc::new(&args.runtime, &args.runtime_root);
    run(args, &runc)
}

/// Supervises job `args.id` with `runtime` (see the module doc): runs its container, then
/// deletes it and writes `exit.json`.
pub fn run(args: &ShimArgs, runtime: &dyn JobRuntime) -> ExitCode {
    let dir = &args.job_dir;
    let record = supervise(args, runtime);
    // The container goes first, so a recorded exit means no container is left.
    for attempt in 1..=3 {
        match runtime.delete(&args.id, true) {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, attempt, "cannot delete the container");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    let json = match serde_json::to_vec_pretty(&record) {
        Ok(json) => json,
        Err(err) => format!("{{\"started\":false,\"error\":\"{err}\"}}").into_bytes(),
    };
    if let Err(err) = write_atomic(&dir.join(EXIT_FILE), &json) {
        tracing::error!(error = %err, "cannot write the exit file");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Marks every descriptor above stderr close-on-exec, so the runtime (and through it the
/// container) gets only the descriptors the shim hands it, never what the shim's parent left
/// open without `O_CLOEXEC` (a shell's, a service manager's). Everything the shim opens itself
/// is close-on-exec already (Rust's default).
fn close_inherited_on_exec() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: one by one. Collected first: the listing holds a descriptor too.
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        tracing::warn!("cannot list /proc/self/fd: inherited descriptors stay open");
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > libc::STDERR_FILENO)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(2) on a descriptor number; a closed one (the listing's) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn supervise(args: &ShimArgs, runtime: &dyn JobRuntime) -> ExitRecord {
    let dir = &args.job_dir;
    let fail = |error: String| ExitRecord {
        finished_at_millis: now_millis(),
        error: Some(error),
        ..ExitRecord::default()
    };
    let (stdout_log, stderr_log) = match (
        open_log(&dir.join(STDOUT_LOG)),
        open_log(&dir.join(STDERR_LOG)),
    ) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return fail(format!("cannot open the log files: {e}")),
    };
    let pid_file = dir.join(CONTAINER_PID_FILE);
    let mut cmd = runtime.run_command(&args.id, &dir.join(BUNDLE_DIR), &pid_file);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => return fail(format!("cannot run {}: {err}", args.runtime.display())),
    };
    // The agent writes it too, right after starting this shim; this copy covers an agent that
    // died in between, and is written while the runtime starts, not before.
    if let Err(err) = write_pid_file(&dir.join(SHIM_PID_FILE), std::process::id()) {
        tracing::error!(error = %err, "cannot write the shim pid file");
    }
    let cap = args.log_max_bytes;
    let copiers: Vec<std::thread::JoinHandle<u64>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .zip([stdout_log, stderr_log])
    .filter_map(|(src, dst)| {
        let src = src?;
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || copy_capped(src, dst, cap))
            .ok()
    })
    .collect();
    let status = child.wait();
    let log_dropped_bytes = copiers.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    let finished_at_millis = now_millis();
    let started = pid_file.exists();
    let fs = FsRoot::host();
    let stats = cgroup::CgroupLayout::detect(&fs)
        .ok()
        .map(|layout| cgroup::read_stats(&fs, &layout, &args.cgroups_path));
    let exit_code = match &status {
        Ok(status) => status.code().or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            status.signal().map(|s| 128 + s)
        }),
        Err(_) => None,
    };
    let error = match (&status, started) {
        (Err(err), _) => Some(format!("cannot wait for the runtime: {err}")),
        (Ok(_), false) => Some(stderr_tail(&dir.join(STDERR_LOG))),
        (Ok(_), true) => None,
    };
    ExitRecord {
        started,
        exit_code,
        finished_at_millis,
        oom_kills: stats.as_ref().and_then(|s| s.oom_kills),
        cpu_usage_nanos: stats.as_ref().and_then(|s| s.cpu_usage_nanos),
        memory_peak_bytes: stats.as_ref().and_then(|s| s.memory_peak_bytes),
        log_dropped_bytes,
        error,
    }
}

/// The last few lines of a log (the runtime's error when the container never started).
pub fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_capped_with_one_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let data = vec![b'x'; 10_000];
        let dropped = copy_capped(&data[..], open_log(&path).unwrap(), 4096);
        assert_eq!(dropped, 10_000 - 4096);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 4096 + TRUNCATED_MARKER.len());
        assert!(written.ends_with(TRUNCATED_MARKER));
        let small = copy_capped(&b"abc"[..], open_log(&dir.path().join("b")).unwrap(), 4096);
        assert_eq!(small, 0);
    }

    #[test]
    fn exit_file_round_trip_and_pid_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(dir.path()), None);
        let record = ExitRecord {
            started: true,
            exit_code: Some(137),
            oom_kills: Some(1),
            ..ExitRecord::default()
        };
        write_atomic(
            &dir.path().join(EXIT_FILE),
            &serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        assert_eq!(read_exit(dir.path()), Some(record));
        assert!(
            !shim_alive(std::process::id() as i32, "job-x", dir.path()),
            "not a shim"
        );
        assert!(!shim_alive(i32::MAX, "job-x", dir.path()));
    }
}
