//! Hostile images and stuck imports against the `fog-agent serve` binary, over ImportImage and
//! RemoveImage on its admin socket: a layer with a FIFO imports and leaves the store and the
//! shutdown free; an import waiting for the store stops when its request times out and does
//! not hold SIGTERM past the grace period; a decompression bomb on a small loop-mounted state
//! filesystem answers RESOURCE_EXHAUSTED and leaves the space free again.
//!
//! Every wait is bounded, so a wedged agent fails the test instead of hanging it; the agent is
//! killed and the loop filesystem unmounted by `Drop` guards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fog_agent::image::testing::{self, TestEntry};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::support;

/// The agent's `[api] shutdown_grace_millis` in these tests.
const GRACE: Duration = Duration::from_millis(1000);
/// Time any single RPC of these tests may take before the agent counts as wedged.
const RPC_BOUND: Duration = Duration::from_secs(20);

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A `fog-agent serve` on a unix socket, killed when dropped.
struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent with its state in `state` and `extra` appended to its config.
    fn serve(dir: &Path, state: &Path, extra: &str) -> Agent {
        Self::serve_with_state(dir, state, "", extra)
    }

    /// `serve` with `state_keys` (TOML lines) in its `[state]` section.
    fn serve_with_state(dir: &Path, state: &Path, state_keys: &str, extra: &str) -> Agent {
        let socket = dir.join("agent.sock");
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let toml = format!(
            "[api]\nlisten = []\nunix_socket = {socket:?}\nshutdown_grace_millis = {}\n\
             [state]\ndir = {state:?}\n{state_keys}[bench]\nrun_on_start = false\n[metrics]\nenabled = false\n\
             [jobs]\ncgroup_parent = \"fog-agent-it-image-{}-{n}\"\nnetwork = \"none\"\n{extra}",
            GRACE.as_millis(),
            std::process::id(),
        );
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.join("agent.log");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(env!("CARGO_BIN_EXE_fog-agent"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "agent did not listen within 20 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Agent {
            child: Some(child),
            socket,
            state: state.to_owned(),
            log,
        }
    }

    async fn client(&self) -> AgentClient<Channel> {
        support::unix_client(&self.socket).await
    }

    /// SIGTERM; returns how long the agent took to exit (at most 10 s, or the test fails).
    fn terminate(&mut self) -> Duration {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        let status = support::terminate(&mut child);
        assert!(status.success(), "{status:?}: {}", self.log());
        started.elapsed()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Names in `<state>/images` other than the lock and `refs.json`: imported images and
    /// temp dirs.
    fn store_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.state.join("images"))
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n != ".lock" && n != "refs.json")
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn import_request(layout: &Path, reference: &str) -> pb::ImportImageRequest {
    pb::ImportImageRequest {
        layout_dir: layout.display().to_string(),
        reference: reference.to_owned(),
    }
}

/// `call`, or a failed test when it takes longer than [`RPC_BOUND`].
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RPC_BOUND, call)
        .await
        .unwrap_or_else(|_| {
            panic!("{what} did not answer within {RPC_BOUND:?}: the agent is wedged")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_a_layer_neither_wedges_the_store_nor_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    testing::busybox_layout(&layout, "fifo:1").unwrap();
    testing::push_layer(
        &layout,
        "fifo:1",
        &[
            TestEntry::Dir {
                path: "run/".to_owned(),
            },
            TestEntry::Fifo {
                path: "run/pipe".to_owned(),
            },
        ],
    )
    .unwrap();
    testing::busybox_layout(&layout, "plain:1").unwrap();
    let mut agent = Agent::serve(dir.path(), &dir.path().join("state"), "");
    let mut client = agent.client().await;

    let image = bounded(
        "ImportImage of a layer with a FIFO",
        client.import_image(import_request(&layout, "fifo:1")),
    )
    .await
    .unwrap()
    .into_inner()
    .image
    .unwrap();
    let hex = image.manifest_digest.strip_prefix("sha256:").unwrap();
    let pipe = agent.state.join("images").join(hex).join("rootfs/run/pipe");
    let meta = std::fs::symlink_metadata(&pipe).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));

    // The store is free: another import and a removal answer.
    bounded(
        "a second ImportImage",
        client.import_image(import_request(&layout, "plain:1")),
    )
    .await
    .unwrap();
    let removed = bounded(
        "RemoveImage",
        client.remove_image(pb::RemoveImageRequest {
            name: "fifo:1".to_owned(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(removed.rootfs_removed);
    assert!(!pipe.exists());

    let took = agent.terminate();
    assert!(
        took < GRACE + Duration::from_secs(2),
        "stopping took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_request_times_out_stops_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    testing::busybox_layout(&layout, "late:1").unwrap();
    let state = dir.path().join("state");
    let agent = Agent::serve(dir.path(), &state, "");
    let mut client = agent.client().await;

    // Another importer holds the store: this import waits, past its deadline.
    let lock = testing::hold_store_lock(&state).unwrap();
    let mut request = tonic::Request::new(import_request(&layout, "late:1"));
    request.set_timeout(Duration::from_millis(500));
    let err = bounded("ImportImage with a deadline", client.import_image(request))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // Once the store is free, the timed-out import does not go on: nothing appears.
    drop(lock);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        agent.store_entries().is_empty(),
        "a cancelled import completed later: {:?}",
        agent.store_entries()
    );
    // And the store works.
    bounded(
        "ImportImage",
        client.import_image(import_request(&layout, "late:1")),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_within_its_grace_while_an_import_waits() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    testing::busybox_layout(&layout, "waiting:1").unwrap();
    let state = dir.path().join("state");
    let mut agent = Agent::serve(dir.path(), &state, "");
    let mut client = agent.client().await;

    let lock = testing::hold_store_lock(&state).unwrap();
    let pending = tokio::spawn(async move {
        client
            .import_image(import_request(&layout, "waiting:1"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "the import waits for the store");
    let took = tokio::task::spawn_blocking(move || {
        let took = agent.terminate();
        (agent, took)
    })
    .await
    .unwrap();
    let (agent, took) = took;
    assert!(
        took < GRACE + Duration::from_secs(2),
        "stopping took {took:?} with an import waiting"
    );
    let answer = bounded("the pending ImportImage", pending).await.unwrap();
    assert!(answer.is_err(), "{answer:?}");
    drop(lock);
    assert!(
        agent.store_entries().is_empty(),
        "{:?}",
        agent.store_entries()
    );
}

/// An ext4 filesystem of `size` bytes in a file, loop-mounted at `mount`; unmounted on drop.
struct LoopFs {
    mount: PathBuf,
}

impl LoopFs {
    /// None (after saying why) when this host cannot make one.
    fn make(test: &str, dir: &Path, size: u64) -> Option<LoopFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            support::skip(test, "mounting a loop filesystem needs root");
            return None;
        }
        let image = dir.join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let mount = dir.join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .output();
        if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
            support::skip(test, &format!("mkfs.ext4 failed: {mkfs:?}"));
            return None;
        }
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .unwrap();
        if !out.status.success() {
            support::skip(
                test,
                &format!(
                    "mount -o loop failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
            return None;
        }
        Some(LoopFs { mount })
    }

    fn free(&self) -> u64 {
        free_at(&self.mount)
    }
}

/// Bytes free for unprivileged writers on the filesystem of `path`.
fn free_at(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes only into the struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a live struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_on_a_small_state_filesystem_is_resource_exhausted() {
    let test = "a_decompression_bomb_on_a_small_state_filesystem_is_resource_exhausted";
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = LoopFs::make(test, dir.path(), 64 << 20) else {
        return;
    };
    let layout = dir.path().join("layout");
    testing::busybox_layout(&layout, "bomb:1").unwrap();
    // 256 MiB of zeros in a blob of about 250 KiB, on a 64 MiB filesystem.
    testing::push_zeros_layer(&layout, "bomb:1", "zeros", 256 << 20).unwrap();
    let state = fs.mount.join("state");

    // No free-space floor: the disk fills, and ENOSPC is the host's state, not a bad request.
    let mut agent = Agent::serve_with_state(dir.path(), &state, "min_free_bytes = 0\n", "");
    let mut client = agent.client().await;
    let before = fs.free();
    let err = bounded(
        "ImportImage of a bomb",
        client.import_image(import_request(&layout, "bomb:1")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        agent.store_entries().is_empty(),
        "{:?}",
        agent.store_entries()
    );
    assert!(fs.free() + (1 << 20) >= before, "the space is free again");
    agent.terminate();

    // With a floor, the import stops before the disk is full.
    let floor = 16u64 << 20;
    let mut agent = Agent::serve_with_state(
        dir.path(),
        &state,
        &format!("min_free_bytes = {floor}\n"),
        "",
    );
    let mut client = agent.client().await;
    let watch = {
        let mount = fs.mount.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut least = u64::MAX;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                least = least.min(free_at(&mount));
                std::thread::sleep(Duration::from_millis(2));
            }
            least
        });
        (stop, handle)
    };
    let err = bounded(
        "ImportImage of a bomb",
        client.import_image(import_request(&layout, "bomb:1")),
    )
    .await
    .unwrap_err();
    watch.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let least = watch.1.join().unwrap();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("state.min_free_bytes"), "{err:?}");
    assert!(
        least >= floor - (2 << 20),
        "free space went down to {least} bytes, below the floor of {floor}"
    );
    assert!(
        agent.store_entries().is_empty(),
        "{:?}",
        agent.store_entries()
    );
    agent.terminate();
}
