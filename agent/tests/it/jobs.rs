//! Jobs end to end with real runc: the daemon in-process (jobs enabled, shims = the built
//! `fog-agent` binary) on its unix admin socket, and the `fog-agent serve` binary for the
//! SIGKILL test; the image is an OCI layout made from the host's `busybox-static`
//! (`image::testing::busybox_layout`), imported with ImportImage. Limits (CPU quota, OOM kill, pids), capacity reservations, idempotency,
//! bad specs, logs, WatchJob, restart recovery.
//!
//! Every test cleans up its containers and cgroups in a `Drop` guard (runc delete --force), so
//! a failing assertion leaves nothing running; every wait is bounded. The GPU job runs on a host
//! root with a simulated NVIDIA driver (`/proc/driver/nvidia`) and the simulated NVML library.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fog_agent::config::Config;
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;
use tonic::Code;

const RUNC: &str = "/usr/sbin/runc";
pub(crate) const IMAGE: &str = "busybox:latest";
pub(crate) const MIB: i64 = 1 << 20;

/// CPU-heavy tests run one at a time (2 cores): a CPU measurement next to a fork bomb or a
/// busy loop would measure the neighbour.
pub(crate) static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A unique name for this process and call.
pub(crate) fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

pub(crate) struct Harness {
    // Dropped first: containers and cgroups go before the temp dir does.
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
    pub(crate) config: Config,
    daemon: Option<RunningDaemon>,
    pub(crate) client: AgentClient<Channel>,
    runc_root: PathBuf,
}

fn config_in(dir: &Path) -> Config {
    let mut config = Config::default();
    config.api.listen = Vec::new();
    config.api.unix_socket = dir.join("agent.sock");
    config.state.dir = dir.join("state");
    config.bench.run_on_start = false;
    config.jobs.cgroup_parent = unique("fog-agent-it");
    config.jobs.telemetry_interval_millis = 200;
    // Jobs here need no network: the host's own network namespace is left alone (the
    // networking tests run their agents in namespaces of their own).
    config.jobs.network = fog_agent::config::JobNetwork::None;
    config.api.shutdown_grace_millis = 1000;
    config.metrics.enabled = false;
    config
}

fn options(config: &Config) -> DaemonOptions {
    DaemonOptions::for_host(config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent"))).unwrap()
}

/// Writes the busybox layout and imports it through ImportImage.
pub(crate) async fn import_busybox(client: &mut AgentClient<Channel>, dir: &Path) {
    let layout = dir.join("layout");
    if !layout.exists() {
        fog_agent::image::testing::busybox_layout(&layout, IMAGE).unwrap();
    }
    let image = client
        .import_image(pb::ImportImageRequest {
            layout_dir: layout.display().to_string(),
            reference: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(image.reference, IMAGE);
    assert!(image.manifest_digest.starts_with("sha256:"));
}

/// Disk `stored` in the agent's capacity: the image store's bytes.
async fn disk_stored(client: &mut AgentClient<Channel>) -> u64 {
    let capacity = client
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    capacity.capacity.unwrap().disk_bytes.unwrap().stored
}

async fn connect(socket: &Path) -> AgentClient<Channel> {
    crate::support::unix_client(socket).await
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_, options| options).await
    }

    /// A harness whose daemon options `adjust` changes (it gets the temp dir).
    async fn start_with(adjust: impl FnOnce(&Path, DaemonOptions) -> DaemonOptions) -> Self {
        Self::start_configured(|_| {}, adjust).await
    }

    /// A harness whose config `configure` changes, and its daemon options `adjust`.
    pub(crate) async fn start_configured(
        configure: impl FnOnce(&mut Config),
        adjust: impl FnOnce(&Path, DaemonOptions) -> DaemonOptions,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        configure(&mut config);
        let options = adjust(dir.path(), options(&config));
        let daemon = daemon::start(&config, options).await.unwrap();
        let mut client = connect(&config.api.unix_socket).await;
        import_busybox(&mut client, dir.path()).await;
        let runc_root = config.state.dir.join("jobs/.runc");
        Self {
            _cleanup: Cleanup::new(&config),
            _dir: dir,
            config,
            daemon: Some(daemon),
            client,
            runc_root,
        }
    }

    /// Stops the daemon (jobs keep running under their shims) and starts a new one on the same
    /// state dir.
    async fn restart(&mut self) {
        self.stop_daemon().await;
        self.start_daemon().await;
    }

    /// Stops the daemon (jobs keep running under their shims).
    pub(crate) async fn stop_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown().await;
        }
    }

    /// Starts a daemon on the state dir (after [`Self::stop_daemon`]).
    pub(crate) async fn start_daemon(&mut self) {
        let daemon = daemon::start(&self.config, options(&self.config))
            .await
            .unwrap();
        self.client = connect(&self.config.api.unix_socket).await;
        self.daemon = Some(daemon);
    }

    fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/cgroup/{controller}/{}/{id}",
            self.config.jobs.cgroup_parent
        ))
    }

    pub(crate) fn containers(&self) -> Vec<String> {
        containers_in(&self.runc_root)
    }
}

/// Removes every container under a runtime root and every cgroup below a parent, on drop.
pub(crate) struct Cleanup {
    runc_root: PathBuf,
    cgroup_parent: String,
}

impl Cleanup {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            runc_root: config.jobs.dir_under(&config.state.dir).join(".runc"),
            cgroup_parent: config.jobs.cgroup_parent.clone(),
        }
    }
}

fn containers_in(runc_root: &Path) -> Vec<String> {
    let out = std::process::Command::new(RUNC)
        .arg("--root")
        .arg(runc_root)
        .args(["list", "--quiet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Whatever happened: no container and no cgroup of this test survives it.
        for id in containers_in(&self.runc_root) {
            for args in [vec!["kill", &id, "KILL"], vec!["delete", "--force", &id]] {
                let _ = std::process::Command::new(RUNC)
                    .arg("--root")
                    .arg(&self.runc_root)
                    .args(args)
                    .output();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for controller in [
            "cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer", "cpuset", "systemd",
            "unified",
        ] {
            let parent = PathBuf::from(format!(
                "/sys/fs/cgroup/{controller}/{}",
                self.cgroup_parent
            ));
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

pub(crate) fn spec(id: &str, script: &str) -> pb::JobSpec {
    pb::JobSpec {
        job_id: id.to_owned(),
        image: IMAGE.to_owned(),
        command: vec!["/bin/sh".into(), "-c".into(), script.to_owned()],
        resources: Some(pb::JobResources {
            cpu_millicores: 500,
            memory_bytes: 64 * MIB,
            pids: 64,
            gpus: vec![],
            scratch_bytes: 0,
            ..pb::JobResources::default()
        }),
        ..pb::JobSpec::default()
    }
}

pub(crate) async fn start(
    client: &mut AgentClient<Channel>,
    spec: pb::JobSpec,
) -> pb::StartJobResponse {
    tokio::time::timeout(
        Duration::from_secs(60),
        client.start_job(pb::StartJobRequest { spec: Some(spec) }),
    )
    .await
    .expect("StartJob within 60 s")
    .unwrap()
    .into_inner()
}

pub(crate) async fn get(client: &mut AgentClient<Channel>, id: &str) -> pb::Job {
    client
        .get_job(pb::GetJobRequest {
            job_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

pub(crate) async fn stop(client: &mut AgentClient<Channel>, id: &str) -> pb::Job {
    tokio::time::timeout(
        Duration::from_secs(30),
        client.stop_job(pb::StopJobRequest {
            job_id: id.to_owned(),
            grace_millis: 200,
        }),
    )
    .await
    .expect("StopJob within 30 s")
    .unwrap()
    .into_inner()
    .job
    .unwrap()
}

/// Polls GetJob until `done`, at most `timeout`.
pub(crate) async fn wait_for(
    client: &mut AgentClient<Channel>,
    id: &str,
    timeout: Duration,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let deadline = Instant::now() + timeout;
    loop {
        let job = get(client, id).await;
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not there within {timeout:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn ended(job: &pb::Job) -> bool {
    matches!(
        job.state(),
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Stopped
    )
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_job_at_500_millicores_uses_half_a_core() {
    let _heavy = HEAVY.lock().await;
    let mut h = Harness::start().await;
    let id = unique("cpu");
    let job = start(&mut h.client, spec(&id, "while :; do :; done")).await;
    assert!(job.created);
    assert_eq!(job.job.unwrap().state(), pb::JobState::Running);
    let usage = h.cgroup_dir("cpuacct", &id).join("cpuacct.usage");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (t0, c0) = (Instant::now(), read_u64(&usage));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (t1, c1) = (Instant::now(), read_u64(&usage));
    let cores = (c1 - c0) as f64 / 1e9 / (t1 - t0).as_secs_f64();
    assert!((0.4..=0.6).contains(&cores), "used {cores:.3} cores");
    let quota = read_u64(&h.cgroup_dir("cpu", &id).join("cpu.cfs_quota_us"));
    assert_eq!(quota, 50_000);
    // Telemetry and counters saw it too.
    let job = get(&mut h.client, &id).await;
    let usage = job.usage.unwrap();
    assert!(usage.cpu_seconds > 1.0, "{usage:?}");
    assert!(job.last_sample.unwrap().cpu_nr_throttled.unwrap() > 0);
    // The /metrics per-job series come from the same samples.
    let metrics = {
        use fog_agent::jobs::JobMetricsSource;
        let jobs = h.daemon.as_ref().unwrap().shared().jobs.clone().unwrap();
        jobs.job_metrics()
    };
    let mine = metrics.iter().find(|m| m.job_id == id).unwrap();
    assert_eq!(mine.state, "running");
    assert!(mine.cpu_seconds.unwrap() > 1.0, "{mine:?}");
    assert_eq!(mine.memory_limit_bytes, Some(64 << 20));
    let stopped = stop(&mut h.client, &id).await;
    assert_eq!(stopped.state(), pb::JobState::Stopped);
    assert_eq!(stopped.termination(), pb::TerminationReason::StopRequested);
    assert!(h.containers().is_empty(), "{:?}", h.containers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_reach_the_record_also_from_jobs_that_end_at_once() {
    // A job that ends before StartJob has seen it running must still give its own status (the
    // shim's exit record), and a job that ends normally succeeds. (Killed jobs: the OOM test's
    // 137.)
    let mut h = Harness::start().await;
    for (script, code, state) in [
        ("exit 7", 7, pb::JobState::Failed),
        ("echo done", 0, pb::JobState::Succeeded),
        ("sleep 0.3; exit 42", 42, pb::JobState::Failed),
    ] {
        let id = unique("exits");
        start(&mut h.client, spec(&id, script)).await;
        let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
        assert_eq!(job.exit_code, Some(code), "{script}: {job:?}");
        assert_eq!(job.state(), state, "{script}: {job:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_under_the_seccomp_allowlist() {
    // Without a filter, a process with no capabilities can still make a user namespace (and so
    // get every capability inside it): `busybox unshare -U true` succeeds in this bundle then
    // (checked with runc by hand). Under the job profile it gets EPERM, while what the allowlist
    // keeps works: subshells (clone without namespace flags), pipes, `personality(PER_LINUX32)`.
    let mut h = Harness::start().await;
    let id = unique("seccomp");
    let script = r#"
        out=$(/bin/busybox unshare -U true 2>&1) && exit 3
        case "$out" in *"Operation not permitted"*) ;; *) echo "$out" >&2; exit 4;; esac
        /bin/busybox linux32 true || exit 5
        [ "$(echo piped | cat)" = piped ] || exit 6
    "#;
    start(&mut h.client, spec(&id, script)).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    assert_eq!(job.exit_code, Some(0), "{job:?}");
    assert_eq!(job.state(), pb::JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_dir_left_by_an_unrecorded_start_is_replaced() {
    // A job dir that no record owns (an older agent wrote the dir before the record and was
    // killed in between; or a forgotten job's dir could not be removed) never had a shim.
    // Starting that id again must work and must not keep anything of the old dir.
    let mut h = Harness::start().await;
    let id = unique("stale");
    let dir = h.config.jobs.dir_under(&h.config.state.dir).join(&id);
    std::fs::create_dir_all(dir.join("bundle")).unwrap();
    std::fs::write(dir.join("bundle/config.json"), b"{ not a bundle").unwrap();
    std::fs::write(dir.join("leftover"), b"x").unwrap();
    let started = start(&mut h.client, spec(&id, "echo fresh")).await;
    assert_eq!(
        started.job.and_then(|j| j.spec).map(|s| s.job_id),
        Some(id.clone())
    );
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    assert!(!dir.join("leftover").exists(), "the stale dir was kept");
    let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
    assert_eq!(out.trim(), "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_are_forgotten_after_their_retention() {
    // An ended job stays readable for `[jobs] retention_millis`; then its record, counters and
    // job dir go, and its id starts a new job.
    let mut h = Harness::start_configured(|c| c.jobs.retention_millis = 3000, |_, o| o).await;
    let id = unique("retained");
    let dir = h.config.jobs.dir_under(&h.config.state.dir).join(&id);
    start(&mut h.client, spec(&id, "echo first")).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    assert!(dir.join("stdout.log").exists(), "logs kept while retained");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = pb::GetJobRequest { job_id: id.clone() };
        match h.client.get_job(request).await {
            Err(status) if status.code() == Code::NotFound => break,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "{id} still known 30 s after it ended"
            ),
            Err(status) => panic!("GetJob {id}: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir.exists(), "the job dir outlived the record");
    let listed = h
        .client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .jobs
            .iter()
            .all(|j| j.spec.as_ref().map(|s| s.job_id.as_str()) != Some(id.as_str())),
        "ListJobs still has {id}"
    );
    let again = start(&mut h.client, spec(&id, "echo second")).await;
    assert!(again.created, "a forgotten id starts a new job");
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
    assert_eq!(out.trim(), "second");
}

/// A job that writes 16 MiB into an 8 MiB scratch, then sleeps; its exit code says how far the
/// writes got (3: all of them; 4: the refusal was not ENOSPC; 5: less than 8 MiB fit).
const FILL_SCRATCH: &str = r#"
    out=$(dd if=/dev/zero of=/scratch/fill bs=1M count=16 2>&1) && exit 3
    case "$out" in *"No space left on device"*) ;; *) echo "$out" >&2; exit 4;; esac
    [ "$(wc -c < /scratch/fill)" -ge 8388608 ] || exit 5
    sleep 60
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_is_a_filesystem_of_its_size_and_the_job_stops_past_it() {
    // `[jobs] scratch_limit = "filesystem"` (the default): the write past the size fails with
    // ENOSPC at once, and the job, now holding more than `scratch_bytes` (the filesystem has a
    // little room over it), is stopped with SCRATCH_LIMIT at the next size check. Once it
    // ended, the filesystem is unmounted and its image gone.
    let mut h = Harness::start().await;
    let id = unique("scratch");
    let dir = h.config.jobs.dir_under(&h.config.state.dir).join(&id);
    let mut s = spec(&id, FILL_SCRATCH);
    s.resources.as_mut().unwrap().scratch_bytes = 8 * MIB;
    start(&mut h.client, s).await;
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounted.contains(&format!("{}/scratch ", dir.display())),
        "scratch not mounted"
    );
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Stopped, "{job:?}");
    assert_eq!(job.termination(), pb::TerminationReason::ScratchLimit);
    // The scratch goes right after the end is recorded (unmount, then the dir and image).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.join("scratch").exists() || dir.join("scratch.img").exists() {
        assert!(
            Instant::now() < deadline,
            "scratch still there 10 s after the end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounted.contains(&format!("{}/scratch ", dir.display())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_scratch_lets_the_writes_through_and_stops_the_job() {
    // `scratch_limit = "polled"` (hosts without loop devices): nothing refuses the writes, so
    // the job gets past dd (exit 3 if it were left alone) and the size check stops it.
    let mut h = Harness::start_configured(
        |c| c.jobs.scratch_limit = fog_agent::config::ScratchLimit::Polled,
        |_, o| o,
    )
    .await;
    let id = unique("polled");
    let mut s = spec(
        &id,
        "dd if=/dev/zero of=/scratch/fill bs=1M count=16; sleep 60",
    );
    s.resources.as_mut().unwrap().scratch_bytes = 8 * MIB;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Stopped, "{job:?}");
    assert_eq!(job.termination(), pb::TerminationReason::ScratchLimit);
}

/// Prints every read-write mount of the container that is not memory or a kernel view (a
/// host filesystem the job could write to); exit 6 when there is one.
const HOST_WRITABLE_MOUNTS: &str = r#"
    awk '{ t = ""; for (i = 1; i <= NF; i++) if ($i == "-") { t = $(i + 1); break }
           split($6, o, ",");
           if (o[1] == "rw" && t != "proc" && t != "tmpfs" && t != "devpts" && t != "mqueue" &&
               t != "sysfs" && t != "cgroup" && t != "cgroup2") { print; bad = 1 } }
         END { exit bad ? 6 : 0 }' /proc/self/mountinfo >&2 || exit 6
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_scratch_has_no_writable_host_path() {
    // scratch_bytes = 0, in both modes: /scratch is an empty read-only tmpfs, no host dir is
    // made for it, and no mount of the container is a writable host filesystem.
    for limit in [
        fog_agent::config::ScratchLimit::Filesystem,
        fog_agent::config::ScratchLimit::Polled,
    ] {
        let mut h = Harness::start_configured(|c| c.jobs.scratch_limit = limit, |_, o| o).await;
        let id = unique("no-scratch");
        let script = format!(
            "{HOST_WRITABLE_MOUNTS}
             echo x > /scratch/file 2>/dev/null && exit 3
             mkdir /scratch/dir 2>/dev/null && exit 4
             exit 0"
        );
        start(&mut h.client, spec(&id, &script)).await;
        let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
        let dir = h.config.jobs.dir_under(&h.config.state.dir).join(&id);
        let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        assert_eq!(
            (job.state(), job.exit_code),
            (pb::JobState::Succeeded, Some(0)),
            "{limit:?}: {job:?}\n{stderr}"
        );
        assert!(
            !dir.join("scratch").exists(),
            "{limit:?}: a host dir was made"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_scratch_counts_directories() {
    // 5,000 empty dirs (20 MB of directory blocks on ext4) in an 8 MiB scratch: once
    // invisible to the size check, which counted regular files' lengths only.
    let mut h = Harness::start_configured(
        |c| c.jobs.scratch_limit = fog_agent::config::ScratchLimit::Polled,
        |_, o| o,
    )
    .await;
    let id = unique("mkdirs");
    let mut s = spec(
        &id,
        "i=0; while [ $i -lt 5000 ]; do mkdir /scratch/d$i; i=$((i+1)); done; sleep 60",
    );
    s.resources.as_mut().unwrap().scratch_bytes = 8 * MIB;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(40), ended).await;
    assert_eq!(job.state(), pb::JobState::Stopped, "{job:?}");
    assert_eq!(job.termination(), pb::TerminationReason::ScratchLimit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_scratch_is_held_to_its_inode_limit() {
    // 1,000 empty files take almost no bytes; `[jobs] scratch_max_inodes` stops the job.
    let mut h = Harness::start_configured(
        |c| {
            c.jobs.scratch_limit = fog_agent::config::ScratchLimit::Polled;
            c.jobs.scratch_max_inodes = 500;
        },
        |_, o| o,
    )
    .await;
    let id = unique("inodes");
    let mut s = spec(
        &id,
        "i=0; while [ $i -lt 1000 ]; do : > /scratch/f$i; i=$((i+1)); done; sleep 60",
    );
    s.resources.as_mut().unwrap().scratch_bytes = 64 * MIB;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(40), ended).await;
    assert_eq!(job.state(), pb::JobState::Stopped, "{job:?}");
    assert_eq!(job.termination(), pb::TerminationReason::ScratchLimit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_removed_only_once_no_active_job_runs_it() {
    let mut h = Harness::start().await;
    let remove = |name: &str| pb::RemoveImageRequest {
        name: name.to_owned(),
    };
    let id = unique("image-user");
    start(&mut h.client, spec(&id, "sleep 60")).await;
    let err = h.client.remove_image(remove(IMAGE)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&id), "names the job: {err:?}");
    // The CLI says the same and fails.
    let socket = h.config.api.unix_socket.clone();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fog-agent"))
            .arg("client")
            .arg("--addr")
            .arg(format!("unix:{}", socket.display()))
            .args(["image", "rm", IMAGE])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        stderr.contains("RemoveImage") && stderr.contains(&id),
        "{stderr}"
    );
    // Refused means untouched: the next job of that image starts.
    let second = unique("image-user");
    start(&mut h.client, spec(&second, "true")).await;
    wait_for(&mut h.client, &second, Duration::from_secs(30), ended).await;

    stop(&mut h.client, &id).await;
    let stored_before = disk_stored(&mut h.client).await;
    let removed = h
        .client
        .remove_image(remove(IMAGE))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.rootfs_removed);
    assert_eq!(removed.removed_references, [IMAGE]);
    let image = removed.image.unwrap();
    // The disk capacity counted the image as stored, and no longer does.
    assert!(image.size_bytes > 0);
    assert_eq!(
        stored_before, image.size_bytes,
        "disk stored = the one image"
    );
    assert_eq!(disk_stored(&mut h.client).await, 0);
    let digest = image.manifest_digest;
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(!h.config.state.dir.join("images").join(hex).exists());
    // Gone for StartJob, and a second removal is NOT_FOUND.
    let err = h
        .client
        .start_job(pb::StartJobRequest {
            spec: Some(spec(&unique("image-gone"), "true")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("image"), "{err:?}");
    let err = h.client.remove_image(remove(IMAGE)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = h.client.remove_image(remove("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_past_its_memory_limit_is_oom_killed_and_reported() {
    let _heavy = HEAVY.lock().await;
    let mut h = Harness::start().await;
    let id = unique("oom");
    let mut s = spec(&id, "x=aaaaaaaaaaaaaaaa; while :; do x=\"$x$x\"; done");
    s.resources.as_mut().unwrap().memory_bytes = 32 * MIB;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(60), ended).await;
    assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
    assert_eq!(
        job.termination(),
        pb::TerminationReason::OomKilled,
        "{job:?}"
    );
    assert_eq!(job.exit_code, Some(137), "{job:?}");
    assert!(job.message.contains("OOM"), "{}", job.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_its_pids_limit() {
    let _heavy = HEAVY.lock().await;
    let mut h = Harness::start().await;
    let id = unique("forkbomb");
    // The bomb runs in a background subshell; the job's init then execs sleep (no fork
    // needed), so the job lives on while the bomb hits the limit.
    let mut s = spec(&id, "f() { f | f & }; f 2>/dev/null & exec sleep 30");
    let r = s.resources.as_mut().unwrap();
    r.pids = 16;
    r.cpu_millicores = 200;
    start(&mut h.client, s).await;
    let pids = h.cgroup_dir("pids", &id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    while Instant::now() < deadline {
        let events = std::fs::read_to_string(pids.join("pids.events")).unwrap_or_default();
        refused = events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        let current = read_u64(&pids.join("pids.current"));
        assert!(current <= 16, "pids.current {current} above the limit");
        if refused > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 0, "no fork was refused at the limit");
    assert_eq!(read_u64(&pids.join("pids.max")), 16);
    let stopped = stop(&mut h.client, &id).await;
    assert!(ended(&stopped), "{stopped:?}");
}

pub(crate) async fn capacity(client: &mut AgentClient<Channel>) -> pb::Capacity {
    client
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner()
        .capacity
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_goes_down_on_start_and_back_up_on_stop() {
    let mut h = Harness::start().await;
    let mut watch = h
        .client
        .watch_capacity(pb::WatchCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let id = unique("cap");
    let mut s = spec(&id, "sleep 60");
    s.resources.as_mut().unwrap().cpu_millicores = 250;
    s.resources.as_mut().unwrap().scratch_bytes = 10 * MIB;
    // The first StartJob waits for the inventory, so capacity totals are known after it.
    start(&mut h.client, s).await;
    let during = capacity(&mut h.client).await;
    let cpu = during.cpu_millicores.unwrap();
    assert_eq!(cpu.allocated, 250);
    assert_eq!(during.memory_bytes.unwrap().allocated, 64 << 20);
    // The scratch filesystem's image: 10 MiB + 1/32 + 2 MiB for its metadata.
    assert_eq!(
        during.disk_bytes.unwrap().allocated,
        (10 << 20) + (10 << 20) / 32 + (2 << 20)
    );
    stop(&mut h.client, &id).await;
    let after = capacity(&mut h.client).await;
    assert_eq!(after.cpu_millicores.unwrap().allocated, 0);
    assert_eq!(after.cpu_millicores.unwrap().free, cpu.free + 250);
    assert_eq!(after.memory_bytes.unwrap().allocated, 0);
    assert!(after.sequence > during.sequence);
    // The watch saw the allocation and the release.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.ends_with(&[250, 0]) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, watch.message())
            .await
            .expect("capacity change within 10 s")
            .unwrap()
            .unwrap();
        let allocated = msg.capacity.unwrap().cpu_millicores.unwrap().allocated;
        if seen.last() != Some(&allocated) {
            seen.push(allocated);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_large_requests_are_resource_exhausted_naming_the_resource() {
    let mut h = Harness::start().await;
    for (field, change) in [
        ("resources.cpu_millicores", (1_000_000_000, 64 * MIB)),
        ("resources.memory_bytes", (100, 1 << 50)),
    ] {
        let id = unique("big");
        let mut s = spec(&id, "sleep 1");
        let r = s.resources.as_mut().unwrap();
        (r.cpu_millicores, r.memory_bytes) = change;
        let status = h
            .client
            .start_job(pb::StartJobRequest { spec: Some(s) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
        let missing = h
            .client
            .get_job(pb::GetJobRequest { job_id: id })
            .await
            .unwrap_err();
        assert_eq!(
            missing.code(),
            Code::NotFound,
            "a refused job is not recorded"
        );
    }
    assert!(h.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_job_id_started_twice_runs_once() {
    let mut h = Harness::start().await;
    let id = unique("twice");
    let s = spec(&id, "sleep 60");
    let (mut c1, mut c2) = (h.client.clone(), h.client.clone());
    let (a, b) = tokio::join!(start(&mut c1, s.clone()), start(&mut c2, s.clone()));
    assert_eq!(
        [a.created, b.created].iter().filter(|c| **c).count(),
        1,
        "exactly one StartJob created the job"
    );
    let again = start(&mut h.client, s.clone()).await;
    assert!(!again.created);
    assert_eq!(again.job.unwrap().state(), pb::JobState::Running);
    assert_eq!(h.containers(), std::slice::from_ref(&id));
    let jobs = h
        .client
        .list_jobs(pb::ListJobsRequest {
            active_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1);
    // The same id with another spec is refused.
    let mut other = s.clone();
    other.command = vec!["/bin/true".into()];
    let status = h
        .client
        .start_job(pb::StartJobRequest { spec: Some(other) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    stop(&mut h.client, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_invalid_argument_naming_the_field() {
    let mut h = Harness::start().await;
    type Change = Box<dyn Fn(&mut pb::JobSpec)>;
    let cases: Vec<(&str, Change)> = vec![
        ("image", Box::new(|s| s.image = "unknown:1".into())),
        ("image", Box::new(|s| s.image = "/bin".into())),
        (
            "resources.memory_bytes",
            Box::new(|s| s.resources.as_mut().unwrap().memory_bytes = -1),
        ),
        (
            "resources.gpus[0]",
            Box::new(|s| {
                s.resources.as_mut().unwrap().gpus =
                    vec!["GPU-00000000-0000-0000-0000-000000000000".into()]
            }),
        ),
        (
            "resources.cpu_millicores",
            Box::new(|s| s.resources.as_mut().unwrap().cpu_millicores = -100),
        ),
        (
            "resources.pids",
            Box::new(|s| s.resources.as_mut().unwrap().pids = 0),
        ),
        ("job_id", Box::new(|s| s.job_id = "../etc".into())),
        (
            "working_dir",
            Box::new(|s| s.working_dir = "relative/dir".into()),
        ),
        (
            "env[0]",
            Box::new(|s| s.env = vec!["no equals sign".into()]),
        ),
    ];
    for (field, change) in cases {
        let mut s = spec(&unique("bad"), "true");
        change(&mut s);
        let status = h
            .client
            .start_job(pb::StartJobRequest {
                spec: Some(s.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            status.message()
        );
    }
    let status = h
        .client
        .start_job(pb::StartJobRequest { spec: None })
        .await
        .unwrap_err();
    assert!(status.message().starts_with("spec"));
    assert!(h.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_while_the_job_runs() {
    let mut h = Harness::start().await;
    let id = unique("logs");
    let script =
        "i=0; while [ $i -lt 300 ]; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.1; done";
    start(&mut h.client, spec(&id, script)).await;
    let mut watch = h
        .client
        .watch_job(pb::WatchJobRequest {
            job_id: id.clone(),
            logs: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut stdout_lines = 0;
    let mut stderr_lines = 0;
    let mut telemetry = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stdout_lines < 10 || stderr_lines < 10 || telemetry < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, watch.message())
            .await
            .expect("watch messages within 20 s")
            .unwrap()
            .unwrap();
        match msg.event.unwrap() {
            pb::watch_job_response::Event::Job(job) => {
                assert_eq!(job.state(), pb::JobState::Running)
            }
            pb::watch_job_response::Event::Telemetry(t) => {
                assert!(t.sample.unwrap().memory_usage_bytes.is_some());
                telemetry += 1;
            }
            pb::watch_job_response::Event::Log(line) => {
                let stream = line.stream();
                let text = String::from_utf8(line.line).unwrap();
                match stream {
                    pb::LogStream::Stdout => {
                        assert!(text.starts_with("line "), "{text}");
                        stdout_lines += 1;
                    }
                    pb::LogStream::Stderr => {
                        assert!(text.starts_with("err "), "{text}");
                        stderr_lines += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    // The job is still running: lines arrived while it ran.
    assert_eq!(get(&mut h.client, &id).await.state(), pb::JobState::Running);
    // JobLogs: the last 3 lines of each stream, then following.
    let mut logs = h
        .client
        .job_logs(pb::JobLogsRequest {
            job_id: id.clone(),
            tail_lines: 3,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut first = Vec::new();
    for _ in 0..8 {
        let msg = tokio::time::timeout(Duration::from_secs(10), logs.message())
            .await
            .expect("log line within 10 s")
            .unwrap()
            .unwrap();
        first.push(String::from_utf8(msg.log.unwrap().line).unwrap());
    }
    assert!(
        first[..3].iter().all(|l| l.starts_with("line ")),
        "{first:?}"
    );
    assert!(
        first[3..6].iter().all(|l| l.starts_with("err ")),
        "{first:?}"
    );
    let n = |l: &str| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap();
    assert!(n(&first[1]) == n(&first[0]) + 1, "{first:?}");
    stop(&mut h.client, &id).await;
    // Followed logs end with the job.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while logs.message().await.unwrap().is_some() {}
    })
    .await;
    assert!(rest.is_ok(), "JobLogs did not end after the job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_finds_running_and_ended_jobs() {
    let _heavy = HEAVY.lock().await;
    let mut h = Harness::start().await;
    let running = unique("keeps");
    let ending = unique("ends");
    let mut busy = spec(&running, "while :; do :; done");
    busy.resources.as_mut().unwrap().cpu_millicores = 300;
    start(&mut h.client, busy).await;
    start(&mut h.client, spec(&ending, "sleep 2; exit 3")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = get(&mut h.client, &running).await.usage.unwrap();
    assert!(before.cpu_seconds > 0.2, "{before:?}");
    // Down for 3 s: `ending` exits meanwhile.
    if let Some(daemon) = h.daemon.take() {
        daemon.shutdown().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.restart().await;
    let job = get(&mut h.client, &running).await;
    assert_eq!(job.state(), pb::JobState::Running, "{job:?}");
    let after = job.usage.unwrap();
    assert!(
        after.cpu_seconds >= before.cpu_seconds,
        "{before:?} {after:?}"
    );
    assert!(after.duration_millis >= before.duration_millis + 3000);
    let gone = get(&mut h.client, &ending).await;
    assert_eq!(gone.state(), pb::JobState::Failed, "{gone:?}");
    assert_eq!(gone.exit_code, Some(3));
    assert_eq!(gone.termination(), pb::TerminationReason::Exited);
    // Telemetry continues: counters grow after the restart.
    let later = wait_for(&mut h.client, &running, Duration::from_secs(10), |j| {
        j.usage.as_ref().unwrap().cpu_seconds > after.cpu_seconds + 0.2
    })
    .await;
    assert!(later.last_sample.is_some());
    // Capacity: only the running job holds its reservation.
    let cap = capacity(&mut h.client).await;
    assert_eq!(cap.cpu_millicores.unwrap().allocated, 300);
    stop(&mut h.client, &running).await;
    assert!(h.containers().is_empty());
}

/// The `fog-agent serve` binary, SIGKILLed mid-job and started again on the same state dir:
/// the job is still running, its counters continue.
#[test]
fn sigkill_of_the_agent_mid_job_and_restart_keep_the_job_and_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let toml = format!(
        "[api]\nlisten = []\nunix_socket = {:?}\n[state]\ndir = {:?}\n[bench]\nrun_on_start = false\n[metrics]\nenabled = false\n[jobs]\ncgroup_parent = {:?}\ntelemetry_interval_millis = 200\nnetwork = \"none\"\n",
        config.api.unix_socket, config.state.dir, config.jobs.cgroup_parent
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, toml).unwrap();
    let guard = Cleanup::new(&config);
    let serve = || {
        let _ = std::fs::remove_file(&config.api.unix_socket);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_fog-agent"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !config.api.unix_socket.exists() {
            assert!(
                Instant::now() < deadline,
                "agent did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _heavy = HEAVY.blocking_lock();
    let id = unique("sigkill");
    let mut agent = serve();
    let before = rt.block_on(async {
        let mut client = connect(&config.api.unix_socket).await;
        import_busybox(&mut client, dir.path()).await;
        start(&mut client, spec(&id, "while :; do :; done")).await;
        wait_for(&mut client, &id, Duration::from_secs(20), |j| {
            j.usage.as_ref().unwrap().cpu_seconds > 0.5
        })
        .await
        .usage
        .unwrap()
    });
    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut agent = serve();
    rt.block_on(async {
        let mut client = connect(&config.api.unix_socket).await;
        let job = get(&mut client, &id).await;
        assert_eq!(job.state(), pb::JobState::Running, "{job:?}");
        let after = job.usage.unwrap();
        assert!(
            after.cpu_seconds >= before.cpu_seconds,
            "{before:?} {after:?}"
        );
        assert!(after.duration_millis >= before.duration_millis + 1000);
        let later = wait_for(&mut client, &id, Duration::from_secs(10), |j| {
            j.usage.as_ref().unwrap().cpu_seconds > after.cpu_seconds + 0.3
        })
        .await;
        assert!(later.last_sample.is_some());
        let stopped = stop(&mut client, &id).await;
        assert_eq!(stopped.state(), pb::JobState::Stopped);
    });
    agent.kill().unwrap();
    agent.wait().unwrap();
    drop(guard);
}

/// A root for the agent that is this host: `/sys` and `/proc` symlinked (but `/proc/driver`,
/// and no pid dirs), and an empty `/dev`. Returns the root dir.
pub(crate) fn this_host_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let proc = root.join("proc");
    std::fs::create_dir_all(&proc).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::os::unix::fs::symlink("/sys", root.join("sys")).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        if name != "driver" && !name.bytes().all(|b| b.is_ascii_digit()) {
            std::os::unix::fs::symlink(format!("/proc/{name}"), proc.join(&*name)).unwrap();
        }
    }
    root
}

/// [`this_host_root`] plus an NVIDIA driver's `/proc/driver/nvidia/gpus/<bus>/information` for
/// one card with minor 0.
fn host_with_an_nvidia_driver(dir: &Path, bus: &str) -> fog_agent::fsroot::FsRoot {
    let root = this_host_root(dir);
    let info = root.join(format!("proc/driver/nvidia/gpus/{bus}"));
    std::fs::create_dir_all(&info).unwrap();
    std::fs::write(
        info.join("information"),
        "Model: \t\t NVIDIA A100 80GB PCIe\nIRQ:   \t\t 42\nDevice Minor: \t 0\n",
    )
    .unwrap();
    fog_agent::fsroot::FsRoot::new(root)
}

/// Daemon options for a host with one NVIDIA card at `bus` (NVML UUID `uuid`, when given) in
/// its inventory, the driver's `/proc` entry, and the simulated NVML library `sim` for jobs'
/// GPU accounting.
pub(crate) fn with_a_simulated_gpu(
    dir: &Path,
    mut options: DaemonOptions,
    bus: &'static str,
    uuid: Option<&'static str>,
    sim: fog_agent::inventory::gpu::nvml::NvmlLibrary,
) -> DaemonOptions {
    let fs = host_with_an_nvidia_driver(dir, bus);
    options.fs = fs.clone();
    let gpu = fog_agent::inventory::gpu::Gpu {
        pci_bus_id: bus.to_owned(),
        vendor: "NVIDIA".to_owned(),
        nvml: uuid.map(|uuid| fog_agent::inventory::gpu::nvml::NvmlDevice {
            uuid: Some(uuid.to_owned()),
            pci_bus_id: Some(bus.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    options.inventory_source = inventory_with_one_gpu(fs, gpu, |_, _| {});
    options.gpu_accounting = Arc::new(fog_agent::gpu::NvmlTelemetry::new(sim));
    options
}

/// The inventory of the host `fs` with `gpu` as its one GPU, `finish` then applied to the GPU
/// section (it gets `fs`).
pub(crate) fn inventory_with_one_gpu(
    fs: fog_agent::fsroot::FsRoot,
    gpu: fog_agent::inventory::gpu::Gpu,
    finish: impl Fn(&mut fog_agent::inventory::gpu::GpuInventory, &fog_agent::fsroot::FsRoot)
        + Send
        + Sync
        + 'static,
) -> fog_agent::inventory::cache::InventorySource {
    Arc::new(move || {
        let mut inventory = fog_agent::inventory::collect_from(fs.clone());
        let gpus = inventory.gpus.data.get_or_insert_with(Default::default);
        gpus.gpus = vec![gpu.clone()];
        finish(gpus, &fs);
        inventory.gpus.status = fog_agent::inventory::ProbeStatus::Ok;
        inventory
    })
}

/// The first process of job `id`'s container.
pub(crate) fn job_pid(h: &Harness, id: &str) -> u32 {
    let procs = h.cgroup_dir("pids", id).join("cgroup.procs");
    std::fs::read_to_string(&procs)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Makes the simulated NVML (configured in `sim_dir`) report an accounting record on card 0 for
/// `pid`, started now and running, and one for another tenant's process (pid 1).
pub(crate) fn nvml_accounts(sim_dir: &Path, pid: u32) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    std::fs::write(
        sim_dir.join("fog-nvml-sim.acct"),
        format!("acct=0:{pid}:{now_us}:0:1,acct=0:1:{now_us}:0:1"),
    )
    .unwrap();
}

/// A GPU job end to end: the GPU is offered (inventory), reserved for one job only, its
/// `/dev/nvidia0` is in the bundle's device allowlist, and the job's GPU-seconds come from the
/// (simulated) NVML accounting records of the job's real container process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_job_gets_its_card_alone_and_gpu_seconds_from_nvml_accounting() {
    const BUS: &str = "0000:17:00.0";
    let (sim_dir, sim_lib) = crate::gpu::sim_with_mode("acct_off");
    let mut h =
        Harness::start_with(|dir, options| with_a_simulated_gpu(dir, options, BUS, None, sim_lib))
            .await;

    let capacity = wait_capacity_gpus(&mut h.client).await;
    assert_eq!(capacity, [BUS]);
    let id = unique("gpu");
    let mut s = spec(&id, "sleep 60");
    s.resources.as_mut().unwrap().gpus = vec![BUS.to_owned()];
    let job = start(&mut h.client, s).await.job.unwrap();
    assert_eq!(job.state(), pb::JobState::Running, "{job:?}");

    // The card is this job's alone.
    let other = unique("gpu-other");
    let mut s = spec(&other, "true");
    s.resources.as_mut().unwrap().gpus = vec![BUS.to_owned()];
    let err = h
        .client
        .start_job(pb::StartJobRequest { spec: Some(s) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("GPU {BUS} is allocated to job")),
        "{err:?}"
    );

    // Only its own card's node is allowed in the container.
    let bundle = h
        .config
        .state
        .dir
        .join(format!("jobs/{id}/bundle/config.json"));
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle).unwrap()).unwrap();
    let devices = bundle["linux"]["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["path"] == "/dev/nvidia0" && d["major"] == 195 && d["minor"] == 0),
        "{devices:?}"
    );

    // NVML's record of the job's container process, started now and running; and another
    // tenant's process on the same card, which is not the job's.
    nvml_accounts(sim_dir.path(), job_pid(&h, &id));
    wait_for(&mut h.client, &id, Duration::from_secs(20), |j| {
        j.usage
            .as_ref()
            .is_some_and(|u| u.gpus.iter().any(|g| g.gpu_seconds >= 1.0))
    })
    .await;
    // Each sample says what the job's processes use of the card now: its one running process
    // (512 MiB, SM 40% in the simulation), not the other tenant's.
    let job = wait_for(&mut h.client, &id, Duration::from_secs(20), |j| {
        j.last_sample
            .as_ref()
            .is_some_and(|s| s.gpus.iter().any(|g| g.memory_used_bytes.unwrap_or(0) > 0))
    })
    .await;
    let gpus = &job.last_sample.as_ref().unwrap().gpus;
    assert_eq!(gpus.len(), 1, "{gpus:?}");
    assert_eq!(gpus[0].pci_bus_id, BUS);
    assert_eq!(gpus[0].memory_used_bytes, Some(512 << 20), "{gpus:?}");
    assert_eq!(gpus[0].sm_utilization_percent, Some(40), "{gpus:?}");
    assert_eq!(gpus[0].note, "");
    let metrics = {
        use fog_agent::jobs::JobMetricsSource;
        let jobs = h.daemon.as_ref().unwrap().shared().jobs.clone().unwrap();
        jobs.job_metrics()
    };
    let mine = metrics.iter().find(|m| m.job_id == id).unwrap();
    assert_eq!(
        mine.gpu_now,
        [(BUS.to_owned(), Some(512 << 20), Some(0.4))],
        "/metrics has the same figures"
    );
    let usage = job.usage.unwrap();
    assert_eq!(usage.gpu_note, "", "{usage:?}");
    assert_eq!(usage.gpus.len(), 1);
    assert_eq!(usage.gpus[0].pci_bus_id, BUS);
    // Held since the record's start, never more than the job ran.
    assert!(
        usage.gpus[0].gpu_seconds * 1000.0 <= usage.duration_millis as f64 + 500.0,
        "{usage:?}"
    );

    let stopped = stop(&mut h.client, &id).await;
    let final_usage = stopped.usage.unwrap();
    assert!(final_usage.gpus[0].gpu_seconds >= usage.gpus[0].gpu_seconds);
    assert_eq!(wait_capacity_gpus(&mut h.client).await, [BUS]);
}

/// The free GPUs once the inventory has been collected (bounded wait).
pub(crate) async fn wait_capacity_gpus(client: &mut AgentClient<Channel>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = capacity(client).await;
        let free: Vec<String> = c
            .gpus
            .iter()
            .filter(|g| g.assignment() == pb::GpuAssignment::Free)
            .map(|g| g.pci_bus_id.clone())
            .collect();
        if !free.is_empty() || Instant::now() > deadline {
            return free;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
