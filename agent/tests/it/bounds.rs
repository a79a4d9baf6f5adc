//! Bounds on what a caller can make the agent hold, echo or fail on (issue 19): ListJobs in
//! pages that fit the message limit (and `client job list` following them), job ids checked
//! before any lookup, undecodable requests, the state dir at start, `check-config` naming every
//! bad key in one run, and the TPM dying in the middle of a quote.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fog_agent::config::{ByteSize, Config};
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;
use tonic::Code;

const RUNC: &str = "/usr/sbin/runc";
const IMAGE: &str = "busybox:latest";

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
}

/// A daemon on a unix socket in its own temp dir, with jobs over runc and busybox imported.
struct Harness {
    dir: tempfile::TempDir,
    config: Config,
    daemon: Option<RunningDaemon>,
    client: AgentClient<Channel>,
}

impl Harness {
    async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.api.listen = Vec::new();
        config.api.unix_socket = dir.path().join("agent.sock");
        config.state.dir = dir.path().join("state");
        config.bench.run_on_start = false;
        config.metrics.enabled = false;
        config.api.shutdown_grace_millis = 1000;
        config.jobs.cgroup_parent = format!("fog-agent-it-bounds-{}", std::process::id());
        config.jobs.network = fog_agent::config::JobNetwork::None;
        config.jobs.telemetry_interval_millis = 200;
        configure(&mut config);
        let options =
            DaemonOptions::for_host(&config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent")))
                .unwrap();
        let daemon = daemon::start(&config, options).await.unwrap();
        let client = crate::support::unix_client(&config.api.unix_socket).await;
        Self {
            dir,
            config,
            daemon: Some(daemon),
            client,
        }
    }

    async fn import_busybox(&mut self) {
        let layout = self.dir.path().join("layout");
        fog_agent::image::testing::busybox_layout(&layout, IMAGE).unwrap();
        self.client
            .import_image(pb::ImportImageRequest {
                layout_dir: layout.display().to_string(),
                reference: String::new(),
            })
            .await
            .unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Jobs here exit at once; whatever is left of them goes with the runtime root.
        let root = self
            .config
            .jobs
            .dir_under(&self.config.state.dir)
            .join(".runc");
        if let Ok(out) = Command::new(RUNC)
            .arg("--root")
            .arg(&root)
            .args(["list", "--quiet"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new(RUNC)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        for controller in [
            "cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer", "cpuset", "systemd",
            "unified",
        ] {
            let parent = PathBuf::from(format!(
                "/sys/fs/cgroup/{controller}/{}",
                self.config.jobs.cgroup_parent
            ));
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

fn job_spec(id: &str, pad: usize) -> pb::JobSpec {
    pb::JobSpec {
        job_id: id.to_owned(),
        image: IMAGE.to_owned(),
        command: vec!["/bin/true".into()],
        env: vec![format!("PAD={}", "p".repeat(pad))],
        resources: Some(pb::JobResources {
            cpu_millicores: 100,
            memory_bytes: 32 << 20,
            pids: 16,
            gpus: vec![],
            scratch_bytes: 0,
            ..pb::JobResources::default()
        }),
        ..pb::JobSpec::default()
    }
}

async fn list(
    client: &mut AgentClient<Channel>,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListJobsResponse, tonic::Status> {
    client
        .list_jobs(pb::ListJobsRequest {
            active_only: false,
            page_size,
            page_token: page_token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn ids(jobs: &[pb::Job]) -> Vec<String> {
    jobs.iter()
        .map(|j| j.spec.clone().unwrap_or_default().job_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_fit_the_message_limit_and_the_cli_follows_them() {
    // 16 KiB messages, jobs of ~3 KiB each: six of them do not fit into one answer.
    let mut h = Harness::start(|c| c.api.max_message_bytes = ByteSize(16 << 10)).await;
    h.import_busybox().await;
    let started: Vec<String> = (0..6).map(|i| format!("page-{i}")).collect();
    for id in &started {
        h.client
            .start_job(pb::StartJobRequest {
                spec: Some(job_spec(id, 3000)),
            })
            .await
            .unwrap();
    }
    let newest_first: Vec<String> = started.iter().rev().cloned().collect();

    // An old client (no page_size, no token): the first page, not OUT_OF_RANGE.
    let first = list(&mut h.client, 0, "").await.unwrap();
    assert!(
        !first.jobs.is_empty() && first.jobs.len() < 6,
        "{} jobs in one 16 KiB page",
        first.jobs.len()
    );
    assert!(!first.next_page_token.is_empty());
    assert_eq!(ids(&first.jobs), newest_first[..first.jobs.len()]);

    // Following the tokens gives every job once, newest first.
    let mut all = ids(&first.jobs);
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = list(&mut h.client, 0, &token).await.unwrap();
        assert!(!page.jobs.is_empty());
        all.extend(ids(&page.jobs));
        token = page.next_page_token;
    }
    assert_eq!(all, newest_first);

    // page_size is a maximum.
    let two = list(&mut h.client, 2, "").await.unwrap();
    assert_eq!(ids(&two.jobs), newest_first[..2]);
    let next = list(&mut h.client, 2, &two.next_page_token).await.unwrap();
    assert_eq!(ids(&next.jobs), newest_first[2..4]);

    // A token the agent did not issue.
    let status = list(&mut h.client, 0, "not-a-token").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("page_token:"), "{status:?}");

    // The CLI lists every page.
    let socket = format!("unix:{}", h.config.api.unix_socket.display());
    let out = tokio::task::spawn_blocking(move || {
        agent()
            .args(["client", "--addr", &socket, "job", "list"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, newest_first, "{stdout}");
    h.daemon.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_are_checked_before_lookup_and_never_echoed() {
    let mut h = Harness::start(|_| {}).await;
    let huge = "a".repeat(1 << 20);
    for id in [huge.as_str(), "../../etc/passwd", ""] {
        let check = |what: &str, result: Result<(), tonic::Status>| {
            let status = result.expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(
                status.message().starts_with("job_id:") && status.message().len() < 200,
                "{what}: {}",
                &status.message()[..status.message().len().min(300)]
            );
        };
        let job_id = id.to_owned();
        check(
            "GetJob",
            h.client
                .get_job(pb::GetJobRequest {
                    job_id: job_id.clone(),
                })
                .await
                .map(drop),
        );
        check(
            "StopJob",
            h.client
                .stop_job(pb::StopJobRequest {
                    job_id: job_id.clone(),
                    grace_millis: 0,
                })
                .await
                .map(drop),
        );
        check(
            "WatchJob",
            h.client
                .watch_job(pb::WatchJobRequest {
                    job_id: job_id.clone(),
                    logs: false,
                })
                .await
                .map(drop),
        );
        check(
            "JobLogs",
            h.client
                .job_logs(pb::JobLogsRequest {
                    job_id,
                    tail_lines: 0,
                    follow: false,
                })
                .await
                .map(drop),
        );
    }
    // A well-formed unknown id is still NOT_FOUND.
    let status = h
        .client
        .get_job(pb::GetJobRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // StartJob quotes a bounded prefix of what it refuses.
    let mut spec = job_spec("echo", 0);
    spec.image = format!("/{}", "i".repeat(32 << 10));
    let status = h
        .client
        .start_job(pb::StartJobRequest { spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("image:") && status.message().len() < 300,
        "{}",
        &status.message()[..status.message().len().min(400)]
    );
    h.daemon.take().unwrap().shutdown().await;
}

/// GetJobRequest with `job_id` as bytes: any bytes, valid UTF-8 or not.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGetJob {
    #[prost(bytes = "vec", tag = "1")]
    job_id: Vec<u8>,
}

/// GetJobRequest with field 1 as a varint: the wrong wire type for a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    job_id: u64,
}

async fn raw_get_job<M: prost::Message + Default + Send + 'static>(
    socket: &Path,
    message: M,
) -> tonic::Status {
    let channel = fog_agent::cli::connect_unix(socket.to_owned())
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = fog_proto::codec::ProtoCodec::<M, pb::GetJobResponse>::default();
    grpc.unary(
        tonic::Request::new(message),
        tonic::codegen::http::uri::PathAndQuery::from_static("/fog.agent.v1.Agent/GetJob"),
        codec,
    )
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument() {
    let mut h = Harness::start(|_| {}).await;
    let socket = h.config.api.unix_socket.clone();
    let status = raw_get_job(
        &socket,
        RawGetJob {
            job_id: vec![b'j', 0xff, 0xfe],
        },
    )
    .await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "invalid UTF-8: {status:?}"
    );
    let status = raw_get_job(&socket, WrongWireType { job_id: 7 }).await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "wrong wire type: {status:?}"
    );
    // The same bytes, well-formed, reach the handler.
    let status = raw_get_job(
        &socket,
        RawGetJob {
            job_id: b"no-such-job".to_vec(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // The service still answers.
    h.client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    h.daemon.take().unwrap().shutdown().await;
}

// ---- the state dir at start, through the binary ----

/// A config serving only a unix socket, no metrics, no benchmarks, state in `state`.
fn serve_config(dir: &Path, state: &Path) -> PathBuf {
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "[api]\nlisten = []\nunix_socket = {:?}\n[state]\ndir = {:?}\n[bench]\nrun_on_start = false\n[metrics]\nenabled = false\n[jobs]\ncgroup_parent = \"fog-agent-it-bounds-serve\"\nnetwork = \"none\"\n",
            dir.join("agent.sock"),
            state
        ),
    )
    .unwrap();
    file
}

/// `fog-agent serve --config config`, its stderr piped.
fn spawn_serve(config: &Path) -> std::process::Child {
    agent()
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `path` exists or the child exits (bounded); true when it exists.
fn wait_for_path(child: &mut std::process::Child, path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn serve_tightens_an_existing_state_dir_to_0700() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = spawn_serve(&serve_config(dir.path(), &state));
    let up = wait_for_path(&mut child, &dir.path().join("agent.sock"));
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777;
    crate::support::terminate(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(up, "the agent did not start: {stderr}");
    assert_eq!(mode, 0o700, "state dir mode {mode:o}");
}

/// A read-only tmpfs mounted at a path, unmounted on drop.
struct ReadOnlyMount(PathBuf);

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn serve_refuses_a_read_only_state_dir_at_start_with_the_cause() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return crate::support::skip(
            "serve_refuses_a_read_only_state_dir_at_start_with_the_cause",
            "mounting a read-only filesystem needs root",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // A state dir an agent used before (its dirs and database exist), then made read-only.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let _mount = ReadOnlyMount(state.clone());
    std::fs::create_dir_all(state.join("images")).unwrap();
    std::fs::create_dir_all(state.join("jobs/.runc")).unwrap();
    std::fs::write(state.join("state.db"), b"").unwrap();
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(remounted.success(), "mount -o remount,ro failed");
    let mut child = spawn_serve(&serve_config(dir.path(), &state));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            crate::support::terminate(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status =
        status.unwrap_or_else(|| panic!("still serving on a read-only state dir: {stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = format!(
        "state dir {}: cannot write to it: Read-only file system",
        state.display()
    );
    assert!(stderr.contains(&line), "{line:?} not in {stderr}");
}

#[test]
fn check_config_names_every_unknown_key_and_wrong_type_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "[api]\nlisten_port = 7443\n\n[telemetry]\nmin_interval_millis = \"250ms\"\n\n[jobs]\nretention_millis = true\nbogus = 1\n\n[nope]\nx = 1\n",
    )
    .unwrap();
    let out = agent().arg("check-config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for needle in [
        ":2:1: api.listen_port: unknown field `listen_port`",
        ":5:",
        "telemetry.min_interval_millis:",
        ":8:",
        "jobs.retention_millis:",
        ":9:1: jobs.bogus: unknown field `bogus`",
        ":11:",
        "nope",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

// ---- the TPM dying mid-quote ----

/// A TCP proxy in front of a swtpm's command and control ports that dies (closes every
/// connection and stops listening) when a TPM2_Quote command passes through it, as a TPM that
/// goes away in the middle of a quote.
struct DyingTpm {
    port: u16,
    dead: Arc<AtomicBool>,
}

/// TPM2_CC_Quote.
const CC_QUOTE: u32 = 0x158;

impl DyingTpm {
    fn start(upstream: u16) -> Self {
        // Two consecutive free ports: the TCTI uses `port` and `port + 1`.
        let (data, control) = loop {
            let data = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = data.local_addr().unwrap().port();
            if port == u16::MAX {
                continue;
            }
            if let Ok(control) = TcpListener::bind(("127.0.0.1", port + 1)) {
                break (data, control);
            }
        };
        let port = data.local_addr().unwrap().port();
        let dead = Arc::new(AtomicBool::new(false));
        let listening = Arc::new(AtomicUsize::new(2));
        for (listener, to, watch) in [(data, upstream, true), (control, upstream + 1, false)] {
            let (dead, listening) = (dead.clone(), listening.clone());
            std::thread::spawn(move || accept_loop(listener, to, watch, &dead, &listening));
        }
        Self { port, dead }
    }
}

impl Drop for DyingTpm {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}

/// Accepts and proxies until the TPM dies, then stops listening (and says so in `listening`).
fn accept_loop(
    listener: TcpListener,
    to: u16,
    watch: bool,
    dead: &Arc<AtomicBool>,
    listening: &Arc<AtomicUsize>,
) {
    listener.set_nonblocking(true).unwrap();
    while !dead.load(Ordering::SeqCst) {
        match listener.accept() {
            // Set before the quote's connection closes, so the agent's attempt to open the TPM
            // again (which comes after) is refused.
            Ok(_) if dead.load(Ordering::SeqCst) => break,
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", to)).unwrap();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (back, forth) = (dead.clone(), dead.clone());
                let still_listening = listening.clone();
                std::thread::spawn(move || copy(s2, c2, false, &back, &Arc::default()));
                std::thread::spawn(move || copy(client, server, watch, &forth, &still_listening));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    // Closed before the dying connection ends, so the agent's attempt to open the TPM again
    // (which comes after that end) is refused, never queued in a backlog nobody accepts.
    drop(listener);
    listening.fetch_sub(1, Ordering::SeqCst);
}

/// Copies `from` to `to`; with `watch` (the command port, where the swtpm TCTI sends raw TPM
/// commands: tag, size, code, rest), forwards one whole command per write (swtpm reads a
/// command with one `recv`) and dies at a TPM2_Quote instead of forwarding it.
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    watch: bool,
    dead: &Arc<AtomicBool>,
    listening: &Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if watch {
            let mut command = vec![0u8; 10];
            if from.read_exact(&mut command).is_err() {
                break;
            }
            let size = u32::from_be_bytes(command[2..6].try_into().unwrap()) as usize;
            let code = u32::from_be_bytes(command[6..10].try_into().unwrap());
            if code == CC_QUOTE {
                dead.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(5);
                while listening.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                break;
            }
            command.resize(size.max(10), 0);
            if from.read_exact(&mut command[10..]).is_err() || to.write_all(&command).is_err() {
                break;
            }
        } else {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if dead.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_tpm_that_dies_mid_quote_is_unavailable() {
    use fog_agent::api::ApiError;
    use fog_agent::attest::{AttestError, Attestor, PcrSelection, TpmAttestor};
    let swtpm = fog_tpm::testing::Swtpm::start().unwrap();
    let fog_tpm::tcti::Tcti::Swtpm { port, .. } = swtpm.tcti() else {
        panic!("not a swtpm TCTI");
    };
    let proxy = DyingTpm::start(port);
    let tcti = fog_tpm::tcti::Tcti::Swtpm {
        host: "127.0.0.1".into(),
        port: proxy.port,
    };
    let state = swtpm.scratch("agent-state");
    std::fs::create_dir_all(&state).unwrap();
    let attestor = TpmAttestor::new(tcti, state);
    let inventory = fog_agent::inventory::collect_from(fog_agent::fsroot::FsRoot::host());
    let err = attestor
        .attest(&[7; 32], &PcrSelection::default(), &inventory)
        .unwrap_err();
    assert!(
        proxy.dead.load(Ordering::SeqCst),
        "the quote never reached the TPM: {err}"
    );
    assert!(matches!(err, AttestError::TpmUnreachable(_)), "{err:?}");
    let status = tonic::Status::from(ApiError::from(err));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
