//! Runs benchmarks in child processes (`fog-agent internal bench-run ...`) with a timeout: a
//! crash (signal), a hang (killed at the timeout) or a bad exit becomes a `failed` record with
//! the reason, and the suite goes on.
//!
//! The child prints one JSON line per finished benchmark, so the results of an OpenCL job that
//! crashes half-way are kept and only the rest are failed.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fog_bench::opencl::DeviceSummary;

use super::suite::Item;
use super::{BenchRecord, Status, SuiteConfig};

/// Why a child gave no usable answer. The cause is part of each message (no `source()`): the
/// text becomes a benchmark record's `reason` as it is.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The child process could not be started.
    #[error("cannot start child: {0}")]
    Spawn(std::io::Error),
    /// Waiting for the child failed (it was killed).
    #[error("cannot wait for child: {0}")]
    Wait(std::io::Error),
    /// The child crashed, hung or exited unsuccessfully: how, with the last line of its stderr.
    #[error("{0}")]
    Ended(String),
    /// The child's OpenCL device list is not JSON of the expected shape.
    #[error("bad device list from child: {0}")]
    BadDeviceList(serde_json::Error),
}

/// How a child ended.
#[derive(Debug)]
enum End {
    Exited(ExitStatus),
    TimedOut(Duration),
}

fn describe(end: &End, stderr: &str) -> String {
    let tail = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let base = match end {
        End::TimedOut(t) => format!("timed out after {:.0} s, killed", t.as_secs_f64()),
        End::Exited(s) => match (s.code(), s.signal()) {
            (_, Some(sig)) => format!("child killed by signal {sig} ({})", signal_name(sig)),
            (Some(c), _) => format!("child exited with status {c}"),
            _ => "child ended abnormally".to_owned(),
        },
    };
    if tail.is_empty() {
        base
    } else {
        format!("{base}: {tail}")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Spawns `cmd`, collects its stdout lines until it exits or `timeout` passes (then kills it).
fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
) -> Result<(Vec<String>, End, String), RunnerError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout kills everything it started (a driver's helper
    // processes would otherwise keep running).
    cmd.process_group(0);
    // And it dies with the agent: a benchmark must not outlive the process that enforces its
    // timeout (systemd stops only the agent itself, see packaging/fog-agent.service).
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child: Child = cmd.spawn().map_err(RunnerError::Spawn)?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    let end = loop {
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        match child.try_wait() {
            Ok(Some(status)) => break End::Exited(status),
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(&child);
                let _ = child.kill();
                let _ = child.wait();
                break End::TimedOut(timeout);
            }
            Ok(None) => {
                if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
                    lines.push(line);
                }
            }
            Err(e) => {
                kill_group(&child);
                let _ = child.kill();
                return Err(RunnerError::Wait(e));
            }
        }
    };
    if matches!(end, End::TimedOut(_)) {
        // Whatever still holds the pipes (a grandchild outside the group) must not block the
        // suite: keep what arrived and leave the reader threads to end on their own.
        std::thread::sleep(Duration::from_millis(50));
        lines.extend(rx.try_iter());
        return Ok((lines, end, String::new()));
    }
    let _ = reader.join();
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    Ok((lines, end, stderr))
}

/// Kills the child's process group (the child is its leader).
fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall; a negative pid names the process group the child leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Lists OpenCL devices in a child (loading a driver can crash or hang).
pub fn list_opencl(exe: &Path, timeout: Duration) -> Result<Vec<DeviceSummary>, RunnerError> {
    let mut cmd = Command::new(exe);
    cmd.args(["internal", "bench-run", "--list-opencl"]);
    let (lines, end, stderr) = run_with_timeout(cmd, timeout)?;
    match (&end, lines.last()) {
        (End::Exited(s), Some(line)) if s.success() => {
            serde_json::from_str(line).map_err(RunnerError::BadDeviceList)
        }
        _ => Err(RunnerError::Ended(describe(&end, &stderr))),
    }
}

/// Runs one job's items in one child and returns one record per item.
pub fn run_job(
    config: &SuiteConfig,
    device_index: Option<usize>,
    items: &[Item],
) -> Vec<BenchRecord> {
    let ids: Vec<&str> = items.iter().map(|i| i.spec.id).collect();
    let timeout: Duration = items.iter().map(|i| i.spec.timeout(config.mode)).sum();
    let mut cmd = Command::new(&config.exe);
    cmd.args(["internal", "bench-run", "--ids", &ids.join(",")]);
    cmd.args(["--mode", config.mode.as_str()]);
    cmd.arg("--state-dir").arg(&config.state_dir);
    match serde_json::to_string(&config.cpu) {
        Ok(facts) => {
            cmd.args(["--cpu-facts", &facts]);
        }
        Err(e) => {
            return fail_all(items, &format!("cannot pass CPU facts: {e}"));
        }
    }
    if let Some(peer) = &config.peer {
        cmd.args(["--peer", peer]);
    }
    if let Some(d) = device_index {
        cmd.args(["--device", &d.to_string()]);
    }
    let (lines, end, stderr) = match run_with_timeout(cmd, timeout) {
        Ok(v) => v,
        Err(e) => return fail_all(items, &e.to_string()),
    };
    let mut got: Vec<BenchRecord> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<BenchRecord>(l).ok())
        .collect();
    let reason = describe(&end, &stderr);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match got.iter().position(|r| r.id == item.spec.id) {
            Some(i) => {
                let mut r = got.swap_remove(i);
                r.driver_versions = item.driver_versions.clone();
                r.device = item.device.clone();
                out.push(r);
            }
            None => out.push(BenchRecord::without_result(
                &item.spec,
                &item.device,
                Status::Failed,
                reason.clone(),
            )),
        }
    }
    out
}

fn fail_all(items: &[Item], reason: &str) -> Vec<BenchRecord> {
    items
        .iter()
        .map(|i| BenchRecord::without_result(&i.spec, &i.device, Status::Failed, reason.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_kills_and_is_described() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first; sleep 30"]);
        let (lines, end, _) = run_with_timeout(cmd, Duration::from_millis(300)).unwrap();
        assert_eq!(lines, ["first"]);
        assert!(describe(&end, "").starts_with("timed out after"));
    }

    #[test]
    fn signal_is_described_with_stderr_tail() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; kill -SEGV $$"]);
        let (_, end, stderr) = run_with_timeout(cmd, Duration::from_secs(10)).unwrap();
        let d = describe(&end, &stderr);
        assert!(
            d.contains("signal 11 (SIGSEGV)") && d.ends_with("boom"),
            "{d}"
        );
    }

    #[test]
    fn missing_executable_is_an_error() {
        let err = run_with_timeout(Command::new("/nonexistent/x"), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot start child: "), "{err}");
    }
}
