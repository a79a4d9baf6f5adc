//! Job shims started by the [`ShimLauncher`]: from the exec'd standby and by exec, both
//! supervising a runtime to its end and recognizable as their job's shim. The runtime is a
//! small script with runc's command line (`run` writes its pid file and exits after a moment,
//! `delete` succeeds), so these tests see the launcher's mechanics alone; the jobs tests run
//! the same shims under real runc.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fog_agent::jobs::launcher::ShimLauncher;
use fog_agent::jobs::shim::{self, ShimArgs};

const AGENT: &str = env!("CARGO_BIN_EXE_fog-agent");

/// `--root R run --bundle B --pid-file P --keep ID` / `--root R delete --force ID`.
const FAKE_RUNTIME: &str = r#"#!/bin/sh
case "$3" in
  run) echo $$ > "$7.tmp" && mv "$7.tmp" "$7" && echo "container output"; exec sleep 1 ;;
  delete) exit 0 ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

/// A runtime that lists the descriptors it was given into `<pid file>.fds`.
const FD_LISTING_RUNTIME: &str = r#"#!/bin/sh
case "$3" in
  run) ls /proc/self/fd > "$7.fds"; echo $$ > "$7.tmp" && mv "$7.tmp" "$7"; exec sleep 0.5 ;;
  delete) exit 0 ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

fn job(root: &Path, id: &str) -> ShimArgs {
    let job_dir = root.join(id);
    std::fs::create_dir_all(&job_dir).unwrap();
    let runtime = root.join("fake-runc");
    if !runtime.exists() {
        std::fs::write(&runtime, FAKE_RUNTIME).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    ShimArgs {
        job_dir,
        id: id.to_owned(),
        runtime,
        runtime_root: root.join(".runc"),
        cgroups_path: format!("/fog-agent-it-shims/{id}"),
        log_max_bytes: 1 << 20,
    }
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Launches `args`, checks the shim is its job's while the runtime runs, and returns the exit
/// record once the runtime has ended (the shim reaped).
fn run_to_the_end(launcher: &ShimLauncher, args: &ShimArgs) -> (Vec<String>, shim::ExitRecord) {
    let log = std::fs::File::create(args.job_dir.join(shim::SHIM_LOG)).unwrap();
    let mut child = launcher.launch(args, log).unwrap();
    let pid = child.id();
    let pid_file = args.job_dir.join(shim::CONTAINER_PID_FILE);
    wait_until("the runtime's pid file", || pid_file.exists());
    // Read once the shim is surely past its exec (the command line of a process is empty for
    // a moment during execve).
    let seen = cmdline(pid);
    assert!(
        shim::shim_alive(pid as i32, &args.id, &args.job_dir),
        "{pid} {seen:?} is the shim of {}",
        args.id
    );
    assert!(!shim::shim_alive(pid as i32, "another-job", Path::new("/")));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::fs::canonicalize(&args.job_dir).unwrap(),
        "shims run in their job dir"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "shim: {status}");
    assert!(!shim::shim_alive(pid as i32, &args.id, &args.job_dir));
    let exit = shim::read_exit(&args.job_dir).expect("exit.json");
    (seen, exit)
}

#[test]
fn standby_and_execd_shims_both_supervise_their_job() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = ShimLauncher::new(PathBuf::from(AGENT));
    let standby = launcher
        .standby_pid()
        .expect("a standby shim from the start");
    wait_until("the standby's exec", || cmdline(standby).len() > 1);
    assert!(cmdline(standby).contains(&"job-shim-standby".to_owned()));

    // The first launch takes the standby: its command line names no job.
    let first = job(dir.path(), "job-a");
    let (seen, exit) = run_to_the_end(&launcher, &first);
    assert!(seen.contains(&"job-shim-standby".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"job-a".to_owned()), "{seen:?}");
    assert!(exit.started, "{exit:?}");
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    assert_eq!(
        std::fs::read_to_string(first.job_dir.join(shim::STDOUT_LOG)).unwrap(),
        "container output\n"
    );
    assert_eq!(launcher.standby_pid(), None, "taken, not yet replaced");

    // With no standby the shim is exec'd with its arguments.
    let second = job(dir.path(), "job-b");
    let (seen, exit) = run_to_the_end(&launcher, &second);
    assert!(seen.contains(&"job-shim".to_owned()), "{seen:?}");
    assert!(seen.contains(&"job-b".to_owned()), "{seen:?}");
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");

    // A new standby; dropping the launcher closes its pipe and it exits (reaped).
    launcher.replenish();
    let next = launcher.standby_pid().expect("a new standby");
    assert_ne!(next, standby);
    drop(launcher);
    assert!(
        !Path::new(&format!("/proc/{next}")).exists(),
        "the standby ended with its launcher"
    );
}

#[test]
fn a_standby_given_garbage_fails_without_a_record() {
    // What the shim does with a line it cannot read: it exits non-zero and leaves nothing
    // behind; the agent then ends the start at once (see `JobManager`), never waits it out.
    let mut child = std::process::Command::new(AGENT)
        .args(["internal", "job-shim-standby"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"job_dir\": 7}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreadable job arguments"), "{stderr}");

    // EOF before any line: the agent went away; a quiet, successful exit.
    let status = std::process::Command::new(AGENT)
        .args(["internal", "job-shim-standby"])
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_runtime_gets_no_descriptor_the_shims_parent_leaked() {
    // A descriptor without close-on-exec in the agent (as a shell or a service manager can
    // leave) reaches the shim, but the shim must not pass it on to the runtime and the job.
    let dir = tempfile::tempdir().unwrap();
    let leaked = std::fs::File::open("/dev/null").unwrap();
    const LEAKED_FD: i32 = 77;
    // SAFETY: dup2 onto a number this test owns; it is closed at the end.
    assert_eq!(
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&leaked), LEAKED_FD) },
        LEAKED_FD
    );
    let launcher = ShimLauncher::new(PathBuf::from(AGENT));
    let mut args = job(dir.path(), "job-fds");
    let runtime = dir.path().join("fd-listing-runc");
    std::fs::write(&runtime, FD_LISTING_RUNTIME).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    args.runtime = runtime;
    let (_, exit) = run_to_the_end(&launcher, &args);
    // SAFETY: closes the descriptor made above.
    unsafe { libc::close(LEAKED_FD) };
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    let listing = std::fs::read_to_string(
        args.job_dir
            .join(format!("{}.fds", shim::CONTAINER_PID_FILE)),
    )
    .unwrap();
    let fds: Vec<&str> = listing.split_whitespace().collect();
    assert!(fds.contains(&"2"), "the listing itself works: {fds:?}");
    assert!(
        !fds.contains(&LEAKED_FD.to_string().as_str()),
        "fd {LEAKED_FD} reached the runtime: {fds:?}"
    );
    // 0-2 and the directory `ls` reads; nothing else.
    assert!(fds.len() <= 4, "{fds:?}");
}
