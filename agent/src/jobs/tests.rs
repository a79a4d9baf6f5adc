//! The job state machine without root or runc: a [`JobManager`] on the fake runtime
//! ([`super::fake`]) in a temp dir (polled scratch, no cgroup hierarchy). Start, exit, stop with
//! grace, time limit, restart recovery, retention, start failure and capacity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fake::{FakeRuntime, FakeSupervisor};
use super::manager::{JobManager, JobSetup};
use super::model::{JobEvent, JobState, JobView, Termination};
use super::spec::{ImageSource, JobSpec, ResolvedImage, Resources};
use super::JobError;
use crate::capacity::{CapacityLedger, Totals};
use crate::config::{CapacityConfig, JobsConfig, ScratchLimit};
use crate::fsroot::FsRoot;
use crate::gpu::accounting::NoGpuAccounting;

/// Every image resolves to one rootfs dir, run as the test's own user.
struct Images(PathBuf);

impl ImageSource for Images {
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        // SAFETY: getuid(2)/getgid(2) cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(Some(ResolvedImage {
            reference: name.to_owned(),
            manifest_digest: format!("sha256:{}", "ab".repeat(32)),
            rootfs: self.0.clone(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".to_owned()],
            env: Vec::new(),
            working_dir: None,
            user: Some(format!("{uid}:{gid}")),
        }))
    }
}

struct Rig {
    dir: tempfile::TempDir,
    fake: Arc<FakeRuntime>,
    capacity: Arc<CapacityLedger>,
    config: JobsConfig,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        let config = JobsConfig {
            scratch_limit: ScratchLimit::Polled,
            retention_millis: 60_000,
            network: crate::config::JobNetwork::None,
            ..JobsConfig::default()
        };
        // No disk reserve: the fake total is not this machine's disk, whose available space
        // bounds free disk too.
        let capacity = Arc::new(CapacityLedger::new(
            CapacityConfig {
                reserve_disk: crate::config::Amount::Bytes(0),
                ..CapacityConfig::default()
            },
            Totals {
                cpu_millicores: Some(4_000),
                memory_bytes: Some(64 << 30),
                disk_bytes: Some(1 << 40),
                ..Totals::default()
            },
        ));
        Self {
            dir,
            fake: FakeRuntime::new(),
            capacity,
            config,
        }
    }

    /// A manager on this rig's state dir (a second one is the agent after a restart).
    fn open(&self) -> Arc<JobManager> {
        let setup = JobSetup {
            config: self.config.clone(),
            state_dir: self.dir.path().join("state"),
            headroom: Arc::new(crate::state::headroom::Headroom::new(
                &self.dir.path().join("state"),
                0,
                0,
            )),
            shim_exe: PathBuf::from("/nonexistent"),
            runtime: self.fake.clone(),
            images: Arc::new(Images(self.dir.path().join("rootfs"))),
            gpu_accounting: Arc::new(NoGpuAccounting),
            fs: FsRoot::new(self.dir.path().join("host")),
        };
        let supervisor = Arc::new(FakeSupervisor(self.fake.clone()));
        JobManager::open_with(setup, self.capacity.clone(), supervisor).unwrap()
    }
}

fn spec(id: &str) -> JobSpec {
    JobSpec {
        job_id: id.to_owned(),
        image: "busybox:latest".to_owned(),
        command: vec!["sleep".to_owned(), "60".to_owned()],
        resources: Resources {
            cpu_millicores: 500,
            memory_bytes: 64 << 20,
            pids: 64,
            scratch_bytes: 1 << 20,
            ..Resources::default()
        },
        ..JobSpec::default()
    }
}

/// Waits (bounded) until job `id` satisfies `done`.
fn wait_until(jobs: &JobManager, id: &str, done: impl Fn(&JobView) -> bool) -> JobView {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = jobs.get(id).unwrap();
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{id} stuck in {:?}", view.record);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ended(view: &JobView) -> bool {
    !view.record.state.is_active()
}

#[test]
fn a_job_starts_runs_and_its_exit_is_recorded_with_its_events() {
    let rig = Rig::new();
    let jobs = rig.open();
    let (view, created) = jobs.start(&spec("a")).unwrap();
    assert!(created);
    assert_eq!(view.record.state, JobState::Running);
    assert!(view.record.started_at_millis.is_some());
    let reserved = rig.capacity.current().capacity.cpu_millicores.allocated;
    assert_eq!(reserved, 500, "the running job holds its CPU");

    // Idempotent: the same spec answers the same job; another spec is refused.
    let (again, created) = jobs.start(&spec("a")).unwrap();
    assert!(!created);
    assert_eq!(again.record.state, JobState::Running);
    let mut other = spec("a");
    other.command = vec!["true".to_owned()];
    assert!(matches!(
        jobs.start(&other),
        Err(JobError::AlreadyExists(_))
    ));

    let (_, mut events) = jobs.subscribe("a").unwrap();
    rig.fake.exit("a", 3);
    // The shim's end is recorded at once (its reaper), not at a tick.
    let view = wait_until(&jobs, "a", ended);
    assert_eq!(view.record.state, JobState::Failed);
    assert_eq!(view.record.termination, Some(Termination::Exited));
    assert_eq!(view.record.exit_code, Some(3));
    assert_eq!(view.record.message, "exited on its own with exit code 3");
    assert_eq!(view.usage.cpu_nanos, 1_000);
    match events.try_recv().unwrap() {
        JobEvent::Changed(view) => assert_eq!(view.record.state, JobState::Failed),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.capacity.current().capacity.cpu_millicores.allocated, 0);
    assert_eq!(jobs.list(true).len(), 0);
    assert_eq!(jobs.list(false).len(), 1);
}

#[test]
fn stop_sends_term_then_kill_after_the_grace() {
    let rig = Rig::new();
    let jobs = rig.open();
    jobs.start(&spec("polite")).unwrap();
    let view = jobs.stop("polite", Duration::from_secs(5)).unwrap();
    assert_eq!(view.record.state, JobState::Stopped);
    assert_eq!(view.record.termination, Some(Termination::StopRequested));
    assert_eq!(view.record.exit_code, Some(143));
    assert_eq!(rig.fake.signals("polite"), Vec::<String>::new(), "deleted");

    jobs.start(&spec("stubborn")).unwrap();
    rig.fake.ignore_term("stubborn");
    let at = Instant::now();
    let view = jobs.stop("stubborn", Duration::from_millis(200)).unwrap();
    assert!(at.elapsed() >= Duration::from_millis(200));
    assert_eq!(view.record.state, JobState::Stopped);
    assert_eq!(view.record.exit_code, Some(137));
    // Stopping an ended job is a no-op.
    let again = jobs.stop("stubborn", Duration::from_millis(1)).unwrap();
    assert_eq!(again.record.exit_code, Some(137));
    assert!(matches!(
        jobs.stop("nope", Duration::ZERO),
        Err(JobError::NotFound(_))
    ));
}

#[test]
fn the_tick_stops_a_job_at_its_time_limit_and_kills_it_after_the_grace() {
    let rig = Rig::new();
    let jobs = rig.open();
    let mut limited = spec("slow");
    limited.time_limit_millis = 100;
    jobs.start(&limited).unwrap();
    rig.fake.ignore_term("slow");
    std::thread::sleep(Duration::from_millis(150));
    jobs.tick();
    let view = jobs.get("slow").unwrap();
    assert_eq!(view.record.state, JobState::Stopping);
    assert_eq!(view.record.stop_cause, Some(Termination::TimeLimit));
    assert_eq!(rig.fake.signals("slow"), ["TERM"]);
    assert!(view.last_sample.is_some(), "a sample was taken");
    // Before the grace: no SIGKILL yet.
    jobs.tick();
    assert_eq!(rig.fake.signals("slow"), ["TERM"]);
    // Past it (the deadline moved forward instead of sleeping 5 s).
    for at in super::records::lock(&jobs.sampler).kill_at.values_mut() {
        *at = Instant::now();
    }
    jobs.tick();
    let view = wait_until(&jobs, "slow", ended);
    assert_eq!(view.record.state, JobState::Stopped);
    assert_eq!(view.record.termination, Some(Termination::TimeLimit));
    assert_eq!(view.record.exit_code, Some(137));
    assert_eq!(
        view.record.message,
        "stopped at its time limit; exit code 137 (signal 9)"
    );
    assert_eq!(
        view.usage.duration_millis, 100,
        "billed up to the limit, not through the grace"
    );
}

#[test]
fn a_job_that_ends_on_its_own_says_so_in_its_message() {
    let rig = Rig::new();
    let jobs = rig.open();
    let (view, _) = jobs.start(&spec("done")).unwrap();
    assert_eq!(view.record.message, "container running");
    rig.fake.exit("done", 0);
    let view = wait_until(&jobs, "done", ended);
    assert_eq!(view.record.state, JobState::Succeeded);
    assert_eq!(view.record.message, "exited on its own with exit code 0");
}

#[test]
fn the_telemetry_thread_wakes_for_a_time_limit_between_ticks() {
    let mut rig = Rig::new();
    rig.config.telemetry_interval_millis = 60_000;
    let jobs = rig.open();
    let _thread = jobs.spawn_sampler().unwrap();
    let mut limited = spec("short");
    limited.time_limit_millis = 200;
    jobs.start(&limited).unwrap();
    // A minute until the next regular tick: only the deadline can end it within the wait.
    let view = wait_until(&jobs, "short", ended);
    assert_eq!(view.record.termination, Some(Termination::TimeLimit));
    assert!(view.usage.duration_millis <= 200, "{:?}", view.usage);
    jobs.shutdown();
}

#[test]
fn a_restarted_manager_finds_running_ended_lost_and_orphaned_containers() {
    let rig = Rig::new();
    let first = rig.open();
    for id in ["keeps", "ends", "lost"] {
        first.start(&spec(id)).unwrap();
    }
    first.shutdown();
    // The agent is gone (its reapers too: what follows is seen by the restart only).
    drop(first);
    rig.fake.exit("ends", 0);
    rig.fake.crash("lost");
    rig.fake.add_orphan("stray");
    wait_until_gone(&rig.fake, "ends");
    wait_until_gone(&rig.fake, "lost");

    let second = rig.open();
    assert_eq!(second.get("keeps").unwrap().record.state, JobState::Running);
    let ends = second.get("ends").unwrap();
    assert_eq!(ends.record.state, JobState::Succeeded);
    assert_eq!(ends.record.exit_code, Some(0));
    let lost = second.get("lost").unwrap();
    assert_eq!(lost.record.state, JobState::Failed);
    assert_eq!(lost.record.termination, Some(Termination::Lost));
    assert!(!rig.fake.running("stray"), "the orphan was removed");
    assert_eq!(
        rig.capacity.current().capacity.cpu_millicores.allocated,
        500,
        "only the running job holds capacity"
    );
    // The running one is still stoppable by the new manager.
    let view = second.stop("keeps", Duration::from_secs(5)).unwrap();
    assert_eq!(view.record.state, JobState::Stopped);
}

fn wait_until_gone(fake: &FakeRuntime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.running(id) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The fake shim writes exit.json before it lets go of the container.
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn ended_jobs_are_forgotten_after_their_retention_and_the_id_may_come_back() {
    let rig = Rig::new();
    let jobs = rig.open();
    jobs.start(&spec("brief")).unwrap();
    rig.fake.exit("brief", 0);
    let view = wait_until(&jobs, "brief", ended);
    let finished = view.record.finished_at_millis.unwrap();
    assert!(jobs.job_dir("brief").exists());
    jobs.forget_expired(finished + 59_000);
    assert!(jobs.get("brief").is_ok(), "kept within the retention");
    jobs.forget_expired(finished + 60_000);
    assert!(matches!(jobs.get("brief"), Err(JobError::NotFound(_))));
    assert!(!jobs.job_dir("brief").exists());
    // Gone from the store too: a restart does not bring it back.
    drop(jobs);
    let jobs = rig.open();
    assert!(jobs.get("brief").is_err());
    let (view, created) = jobs.start(&spec("brief")).unwrap();
    assert!(created && view.record.state == JobState::Running);
}

#[test]
fn ended_jobs_past_max_retained_jobs_are_forgotten_oldest_first_in_memory_and_on_disk() {
    let mut rig = Rig::new();
    rig.config.max_retained_jobs = 2;
    let jobs = rig.open();
    for id in ["e1", "e2", "e3"] {
        jobs.start(&spec(id)).unwrap();
        rig.fake.exit(id, 0);
        wait_until(&jobs, id, ended);
        // Distinct end times, so "oldest" is well defined.
        std::thread::sleep(Duration::from_millis(5));
    }
    jobs.start(&spec("active")).unwrap();
    let finished = jobs.get("e3").unwrap().record.finished_at_millis.unwrap();
    // Well within the retention: only the cap forgets.
    jobs.forget_expired(finished + 1);
    assert!(matches!(jobs.get("e1"), Err(JobError::NotFound(_))));
    assert!(!jobs.job_dir("e1").exists());
    for id in ["e2", "e3", "active"] {
        assert!(jobs.get(id).is_ok(), "{id} kept");
    }
    // Gone from the store too: a restarted agent does not bring it back.
    drop(jobs);
    let jobs = rig.open();
    assert!(jobs.get("e1").is_err());
    assert_eq!(jobs.list(false).len(), 3);
}

#[test]
fn pids_above_the_hosts_pid_max_are_refused_at_admission() {
    let rig = Rig::new();
    let kernel = rig.dir.path().join("host/proc/sys/kernel");
    std::fs::create_dir_all(&kernel).unwrap();
    std::fs::write(kernel.join("pid_max"), "32768\n").unwrap();
    let jobs = rig.open();
    let mut big = spec("many-pids");
    big.resources.pids = 32_769;
    match jobs.start(&big) {
        Err(JobError::InvalidArgument { field, message }) => {
            assert_eq!(field, "resources.pids");
            assert!(message.contains("32768"), "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // Refused before anything was recorded: the id is free.
    assert!(matches!(jobs.get("many-pids"), Err(JobError::NotFound(_))));
    big.resources.pids = 32_768;
    jobs.start(&big).unwrap();
}

#[test]
fn a_spec_past_max_spec_bytes_is_refused_naming_the_limit_and_not_kept() {
    let rig = Rig::new();
    let jobs = rig.open();
    let mut big = spec("big-spec");
    big.env = vec![format!("BLOB={}", "x".repeat(70 * 1024))];
    match jobs.start(&big) {
        Err(JobError::InvalidArgument { field, message }) => {
            assert_eq!(field, "spec");
            assert!(message.contains("max_spec_bytes"), "{message}");
            assert!(message.len() < 200, "{message}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(jobs.get("big-spec").is_err());
}

#[test]
fn a_start_the_runtime_refuses_is_recorded_as_failed() {
    let rig = Rig::new();
    let jobs = rig.open();
    rig.fake.fail_start("bad");
    match jobs.start(&spec("bad")) {
        Err(JobError::StartFailed { id, message }) => {
            assert_eq!(id, "bad");
            assert!(message.contains("refused"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let view = jobs.get("bad").unwrap();
    assert_eq!(view.record.state, JobState::Failed);
    assert_eq!(view.record.termination, Some(Termination::StartFailed));
    assert_eq!(rig.capacity.current().capacity.cpu_millicores.allocated, 0);
}

#[test]
fn requests_past_the_free_capacity_are_refused_naming_the_resource() {
    let rig = Rig::new();
    let jobs = rig.open();
    let mut big = spec("big");
    big.resources.cpu_millicores = 1_000_000;
    match jobs.start(&big) {
        Err(JobError::ResourceExhausted { resource, .. }) => {
            assert_eq!(resource, "resources.cpu_millicores")
        }
        other => panic!("{other:?}"),
    }
    assert!(jobs.get("big").is_err(), "nothing recorded");
}

#[test]
fn readers_do_not_wait_for_a_writer() {
    // A writer holding the store (as during a commit's fsync) does not block get/list.
    let rig = Rig::new();
    let jobs = rig.open();
    jobs.start(&spec("r")).unwrap();
    let writer = jobs.records.hold_writer_for_test();
    let at = Instant::now();
    assert!(jobs.get("r").is_ok());
    assert_eq!(jobs.list(false).len(), 1);
    assert!(jobs.subscribe("r").is_ok());
    use super::JobMetricsSource;
    assert_eq!(jobs.job_metrics().len(), 1);
    assert!(at.elapsed() < Duration::from_secs(1));
    drop(writer);
}

/// A second connection to the rig's database, as an operator's `sqlite3` would be.
fn db(rig: &Rig) -> rusqlite::Connection {
    rusqlite::Connection::open(rig.dir.path().join("state").join(crate::state::DB_FILE)).unwrap()
}

fn stored_state(rig: &Rig, id: &str) -> String {
    db(rig)
        .query_row("SELECT state FROM jobs WHERE job_id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
}

/// Makes every job update fail in SQLite, as a full disk does (a trigger: no root needed).
fn refuse_updates(rig: &Rig) {
    db(rig)
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE ON jobs
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
        )
        .unwrap();
}

fn accept_updates(rig: &Rig) {
    db(rig).execute_batch("DROP TRIGGER refuse;").unwrap();
}

#[test]
fn a_failed_commit_never_keeps_a_job_from_stopping_and_is_written_later() {
    let rig = Rig::new();
    let jobs = rig.open();
    jobs.start(&spec("stuck")).unwrap();
    let mut limited = spec("limited");
    limited.time_limit_millis = 100;
    jobs.start(&limited).unwrap();
    refuse_updates(&rig);

    // StopJob: the job is stopped and answered as such.
    let view = jobs.stop("stuck", Duration::from_secs(5)).unwrap();
    assert_eq!(view.record.state, JobState::Stopped);
    assert_eq!(view.record.termination, Some(Termination::StopRequested));
    assert!(!rig.fake.running("stuck"));
    assert_eq!(stored_state(&rig, "stuck"), "running", "not on disk yet");
    assert!(jobs.records.unsaved() >= 1);
    // Its reservation is released all the same.
    assert_eq!(
        rig.capacity.current().capacity.cpu_millicores.allocated,
        500
    );

    // The agent's own time-limit stop too.
    std::thread::sleep(Duration::from_millis(150));
    jobs.tick();
    assert_eq!(rig.fake.signals("limited"), ["TERM"]);
    let view = wait_until(&jobs, "limited", ended);
    assert_eq!(view.record.termination, Some(Termination::TimeLimit));
    assert_eq!(stored_state(&rig, "limited"), "running");

    // Writes work again: the next tick commits everything, in order, with every transition.
    accept_updates(&rig);
    jobs.tick();
    assert_eq!(jobs.records.unsaved(), 0);
    assert_eq!(stored_state(&rig, "stuck"), "stopped");
    assert_eq!(stored_state(&rig, "limited"), "stopped");
    let transitions: Vec<String> = db(&rig)
        .prepare("SELECT state FROM job_events WHERE job_id = 'stuck' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(transitions, ["creating", "running", "stopping", "stopped"]);
    // And a restart sees what was answered.
    drop(jobs);
    let jobs = rig.open();
    assert_eq!(jobs.get("stuck").unwrap().record.state, JobState::Stopped);
}
