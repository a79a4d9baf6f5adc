//! Pulls from a real registry: Debian's `docker-registry` (distribution 2.8) run by each test on
//! a loopback port with TLS (a CA made by the test, given to the agent as `[images] ca_file`)
//! and htpasswd auth (bcrypt, `htpasswd -B`); test images (from `image::testing`) pushed with
//! `skopeo copy`: gzip and zstd layers, and a multi-platform index (`--all`). Blob downloads
//! are counted from the registry's access log; a registry that dies mid-pull is a loopback TCP
//! proxy that cuts the connection after some bytes. Garbage collection runs in the daemon with
//! real runc jobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fog_agent::image::pull::{self, Credentials, PullPolicy, PullProgress};
use fog_agent::image::testing::{self, LayerFormat, TestEntry};
use fog_agent::image::{ImageError, ImageRecord, ImageStore, ImportCancel};

use crate::support::skip;

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pass";

/// A `docker-registry` on 127.0.0.1 with TLS and htpasswd, killed when dropped.
pub(crate) struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Registry {
    /// A running registry, or `None` (after saying why) when a tool is missing.
    pub(crate) fn start(test: &str) -> Option<Registry> {
        for tool in ["docker-registry", "htpasswd", "skopeo"] {
            if !have(tool) {
                skip(
                    test,
                    &format!("{tool} is not installed (packaging/setup-debian.sh --test)"),
                );
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let certs = fog_agent::api::tls::DevCerts::generate().unwrap();
        std::fs::write(d.join("ca.pem"), &certs.ca.cert_pem).unwrap();
        std::fs::write(d.join("server.pem"), &certs.server.cert_pem).unwrap();
        std::fs::write(d.join("server.key"), &certs.server.key_pem).unwrap();
        std::fs::create_dir(d.join("certs.d")).unwrap();
        std::fs::write(d.join("certs.d/ca.crt"), &certs.ca.cert_pem).unwrap();
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(d.join("htpasswd"), &out.stdout).unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\nauth:\n  htpasswd:\n    realm: fog-test\n    path: {d}/htpasswd\n",
            data = d.join("data").display(),
            d = d.display(),
        );
        std::fs::write(d.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen within 20 s: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image tagged `tag` in `layout` to `repo_tag` (`repo:tag`), optionally
    /// compressing uncompressed layers with zstd.
    pub(crate) fn push(&self, layout: &Path, tag: &str, repo_tag: &str, zstd: bool) {
        let extra: &[&str] = if zstd {
            &["--dest-compress-format", "zstd"]
        } else {
            &[]
        };
        self.push_with(layout, tag, repo_tag, extra);
    }

    /// `skopeo copy` with `extra` arguments.
    fn push_with(&self, layout: &Path, tag: &str, repo_tag: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.arg("copy")
            .arg("--dest-cert-dir")
            .arg(self.dir.path().join("certs.d"))
            .arg("--dest-creds")
            .arg(format!("{USER}:{PASSWORD}"));
        cmd.args(extra);
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Blob GETs of `repo` answered so far (the access log).
    fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn policy(hosts: &[String], ca: &Path) -> PullPolicy {
    PullPolicy {
        allowed_registries: hosts.to_vec(),
        insecure_registries: Vec::new(),
        ca_file: Some(ca.to_owned()),
        max_compressed_bytes: 1 << 30,
        max_store_bytes: 0,
    }
}

fn creds() -> Credentials {
    Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

async fn pull_with(
    store: &ImageStore,
    policy: &PullPolicy,
    reference: &str,
    credentials: Option<&Credentials>,
) -> Result<ImageRecord, ImageError> {
    let (progress, _watch) = tokio::sync::watch::channel(PullProgress::default());
    pull::pull(
        store,
        policy,
        reference,
        credentials,
        &progress,
        &ImportCancel::new(),
    )
    .await
}

fn file(path: &str, contents: &[u8]) -> TestEntry {
    TestEntry::File {
        path: path.to_owned(),
        contents: contents.to_vec(),
        mode: 0o644,
    }
}

/// Incompressible bytes (a fixed xorshift stream).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Names in the store dir that a failed pull must not leave: image dirs, temp dirs.
fn leftovers(store: &ImageStore) -> Vec<String> {
    std::fs::read_dir(store.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64 || n.starts_with(".tmp-") || n.starts_with(".pull-"))
        .collect()
}

fn cached_blobs(store: &ImageStore) -> usize {
    std::fs::read_dir(store.dir().join("blobs/sha256")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_and_by_digest_with_gzip_and_zstd_layers() {
    let test = "pulls_by_tag_and_by_digest_with_gzip_and_zstd_layers";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:gz").unwrap();
    testing::push_layer(&layout, "app:gz", &[file("etc/hello", b"gzip\n")]).unwrap();
    registry.push(&layout, "app:gz", "t/app:gz", false);
    // Uncompressed layers, compressed by skopeo with zstd on the way to the registry.
    testing::busybox_layout(&layout, "app:tar").unwrap();
    testing::push_layer_with(
        &layout,
        "app:tar",
        &[file("etc/hello", b"zstd\n")],
        LayerFormat::Tar,
    )
    .unwrap();
    registry.push(&layout, "app:tar", "t/app:zstd", true);

    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path()).unwrap();
    let policy = policy(&[registry.host()], &registry.ca());
    let host = registry.host();
    let by_tag = pull_with(&store, &policy, &format!("{host}/t/app:gz"), Some(&creds()))
        .await
        .unwrap();
    assert_eq!(by_tag.reference, format!("{host}/t/app:gz"));
    assert_eq!(
        std::fs::read_to_string(by_tag.rootfs.join("etc/hello")).unwrap(),
        "gzip\n"
    );
    assert!(by_tag.rootfs.join("bin/busybox").is_file());

    // By digest, into another store.
    let state2 = tempfile::tempdir().unwrap();
    let store2 = ImageStore::open(state2.path()).unwrap();
    let pinned = format!("{host}/t/app@{}", by_tag.manifest_digest);
    let by_digest = pull_with(&store2, &policy, &pinned, Some(&creds()))
        .await
        .unwrap();
    assert_eq!(by_digest.manifest_digest, by_tag.manifest_digest);
    assert_eq!(by_digest.reference, pinned);

    let zstd = pull_with(
        &store,
        &policy,
        &format!("{host}/t/app:zstd"),
        Some(&creds()),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(zstd.rootfs.join("etc/hello")).unwrap(),
        "zstd\n"
    );
    let hex = zstd.manifest_digest.trim_start_matches("sha256:");
    let manifest = std::fs::read_to_string(store.dir().join("blobs/sha256").join(hex)).unwrap();
    assert!(
        manifest.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "skopeo pushed no zstd layer: {manifest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_cause_and_leave_nothing() {
    let test = "refusals_name_their_cause_and_leave_nothing";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:1").unwrap();
    testing::push_layer(&layout, "app:1", &[file("srv/noise", &noise(2 << 20))]).unwrap();
    registry.push(&layout, "app:1", "t/app:1", false);
    let host = registry.host();
    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path()).unwrap();
    let policy = policy(std::slice::from_ref(&host), &registry.ca());
    let reference = format!("{host}/t/app:1");

    let wrong = format!("{host}/t/app@sha256:{}", "ab".repeat(32));
    let err = pull_with(&store, &policy, &wrong, Some(&creds()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotInRegistry { .. }), "{err}");

    let err = pull_with(
        &store,
        &policy,
        &format!("{host}/t/app:nope"),
        Some(&creds()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::NotInRegistry { .. }), "{err}");

    let bad = Credentials {
        username: USER.into(),
        password: "wrong-password".into(),
    };
    let err = pull_with(&store, &policy, &reference, Some(&bad))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    let err = pull_with(&store, &policy, &reference, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");

    let outside = PullPolicy {
        allowed_registries: vec!["ghcr.io".into()],
        ..policy.clone()
    };
    let err = pull_with(&store, &outside, &reference, Some(&creds()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryNotAllowed { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&host) && text.contains("images.allowed_registries"),
        "{text}"
    );

    let small = PullPolicy {
        max_compressed_bytes: 1 << 20,
        ..policy.clone()
    };
    let err = pull_with(&store, &small, &reference, Some(&creds()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("images.max_compressed_bytes"),
        "{err}"
    );
    // Refused before downloading: no blob fetched.
    assert_eq!(registry.blob_gets("t/app"), 0, "{}", registry.log());
    assert_eq!(cached_blobs(&store), 0);

    for malformed in ["", "a b", "repo::tag", "host/repo@sha256:short"] {
        let err = pull_with(&store, &policy, malformed, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::BadReference { .. }),
            "{malformed:?}: {err}"
        );
    }
    assert!(store.list().unwrap().is_empty());
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_once_and_shared_layers_are_not_downloaded_again() {
    let test = "concurrent_pulls_download_once_and_shared_layers_are_not_downloaded_again";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:1").unwrap();
    testing::push_layer(&layout, "app:1", &[file("srv/one", &noise(1 << 20))]).unwrap();
    registry.push(&layout, "app:1", "t/share:1", false);
    testing::push_layer(&layout, "app:1", &[file("srv/two", b"two\n")]).unwrap();
    registry.push(&layout, "app:1", "t/share:2", false);
    let host = registry.host();
    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path()).unwrap();
    let policy = policy(std::slice::from_ref(&host), &registry.ca());
    let before = registry.blob_gets("t/share");
    let one = format!("{host}/t/share:1");
    let creds = creds();
    let (a, b) = tokio::join!(
        pull_with(&store, &policy, &one, Some(&creds)),
        pull_with(&store, &policy, &one, Some(&creds)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.manifest_digest, b.manifest_digest);
    // Config + 2 layers, each downloaded once for the two pulls.
    assert_eq!(
        registry.blob_gets("t/share") - before,
        3,
        "{}",
        registry.log()
    );

    let before = registry.blob_gets("t/share");
    let two = pull_with(&store, &policy, &format!("{host}/t/share:2"), Some(&creds))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(two.rootfs.join("srv/two")).unwrap(),
        "two\n"
    );
    // Only the new config and the new layer.
    assert_eq!(
        registry.blob_gets("t/share") - before,
        2,
        "{}",
        registry.log()
    );
}

/// A loopback TCP proxy to `upstream` that, while `cut_after` is not `u64::MAX`, closes every
/// connection once that many bytes came back from upstream (in total); `forwarded` counts them.
struct CuttingProxy {
    port: u16,
    cut_after: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

impl CuttingProxy {
    fn start(upstream: u16) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut_after = Arc::new(AtomicU64::new(u64::MAX));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (cut, fwd) = (cut_after.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c2, &mut &s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let (cut, fwd) = (cut.clone(), fwd.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        let n = match (&server).read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let total = fwd.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if total > cut.load(Ordering::SeqCst) {
                            break;
                        }
                        if (&client).write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        CuttingProxy {
            port,
            cut_after,
            forwarded,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_dying_mid_pull_leaves_nothing_and_a_retry_resumes() {
    let test = "a_registry_dying_mid_pull_leaves_nothing_and_a_retry_resumes";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let big = 8usize << 20;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:1").unwrap();
    testing::push_layer(&layout, "app:1", &[file("srv/big", &noise(big))]).unwrap();
    registry.push(&layout, "app:1", "t/big:1", false);
    let proxy = CuttingProxy::start(registry.port);
    let host = format!("127.0.0.1:{}", proxy.port);
    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path()).unwrap();
    let policy = policy(std::slice::from_ref(&host), &registry.ca());
    let reference = format!("{host}/t/big:1");

    // What a whole pull moves through the proxy.
    let fresh = tempfile::tempdir().unwrap();
    let fresh = ImageStore::open(fresh.path()).unwrap();
    pull_with(&fresh, &policy, &reference, Some(&creds()))
        .await
        .unwrap();
    let whole = proxy.forwarded.swap(0, Ordering::SeqCst);

    proxy.cut_after.store(4 << 20, Ordering::SeqCst);
    let err = pull_with(&store, &policy, &reference, Some(&creds()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryUnavailable { .. }),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    let partial: u64 = std::fs::read_dir(store.dir().join("blobs/.partial"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(partial > 0, "nothing kept to resume");

    proxy.cut_after.store(u64::MAX, Ordering::SeqCst);
    proxy.forwarded.store(0, Ordering::SeqCst);
    let record = pull_with(&store, &policy, &reference, Some(&creds()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(record.rootfs.join("srv/big"))
            .unwrap()
            .len(),
        big as u64
    );
    // Resumed: the retry fetched about what the whole pull did less what was kept.
    let retried = proxy.forwarded.load(Ordering::SeqCst);
    assert!(
        retried + partial / 2 < whole,
        "the retry fetched {retried} bytes, a whole pull {whole} (kept {partial})"
    );
}

/// `fog-agent image pull` with the password on stdin: the image lands in the store, the
/// password is nowhere in the output.
#[test]
fn cli_pull_reads_the_password_from_stdin() {
    let test = "cli_pull_reads_the_password_from_stdin";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:1").unwrap();
    registry.push(&layout, "app:1", "t/cli:1", false);
    let config = work.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n[images]\nallowed_registries = [\"{}\"]\nca_file = \"{}\"\n",
            work.path().join("state").display(),
            registry.host(),
            registry.ca().display()
        ),
    )
    .unwrap();
    let reference = format!("{}/t/cli:1", registry.host());
    let mut child = Command::new(env!("CARGO_BIN_EXE_fog-agent"))
        .args([
            "image",
            "pull",
            &reference,
            "--username",
            USER,
            "--password-stdin",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    let record: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["reference"], reference.as_str());
}

/// Pulls through the daemon's PullImage: the progress messages, then the image.
async fn pull_rpc(
    client: &mut fog_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
    reference: &str,
) -> (Vec<fog_proto::v1::PullProgress>, fog_proto::v1::Image) {
    use fog_proto::v1 as pb;
    let mut stream = client
        .pull_image(pb::PullImageRequest {
            reference: reference.to_owned(),
            username: USER.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut progress = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), stream.message())
            .await
            .expect("a PullImage message within 120 s")
            .unwrap()
            .expect("the stream ends with the image");
        match message.event.unwrap() {
            pb::pull_image_response::Event::Progress(p) => progress.push(p),
            pb::pull_image_response::Event::Image(image) => return (progress, image),
        }
    }
}

/// Garbage collection in the daemon after each pull, with `[images] max_bytes` below any image:
/// every image no job runs goes (least recently used first), never the one just pulled and
/// never one an active job runs; the blobs only removed images used go with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_removes_unused_images_and_never_one_a_job_runs() {
    let test = "garbage_collection_removes_unused_images_and_never_one_a_job_runs";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:1").unwrap();
    testing::push_layer(&layout, "app:1", &[file("srv/one", b"one\n")]).unwrap();
    registry.push(&layout, "app:1", "t/gc:1", false);
    testing::push_layer(&layout, "app:1", &[file("srv/two", b"two\n")]).unwrap();
    registry.push(&layout, "app:1", "t/gc:2", false);
    let (host, ca) = (registry.host(), registry.ca());
    let mut h = crate::jobs::Harness::start_configured(
        |config| {
            config.images.allowed_registries = vec![host.clone()];
            config.images.ca_file = ca.clone();
            config.images.max_bytes = fog_agent::config::ByteSize(1);
        },
        |_, options| options,
    )
    .await;
    let store = ImageStore::open(&h.config.state.dir).unwrap();
    let exists = |name: &str| store.get(name).unwrap().is_some();
    // busybox:latest (imported by the harness) runs a job.
    let id = crate::jobs::unique("gc");
    crate::jobs::start(&mut h.client, crate::jobs::spec(&id, "sleep 300")).await;

    let one = format!("{host}/t/gc:1");
    let (progress, image) = pull_rpc(&mut h.client, &one).await;
    assert_eq!(image.reference, one);
    let last = progress.last().expect("progress messages");
    assert!(last.layers_total == 2 && last.bytes_total > 0, "{last:?}");
    assert!(
        exists(crate::jobs::IMAGE),
        "GC removed the image a job runs"
    );
    assert!(exists(&one), "GC removed the image just pulled");

    let two = format!("{host}/t/gc:2");
    let (_, image_two) = pull_rpc(&mut h.client, &two).await;
    assert!(!exists(&one), "the unused image stayed");
    assert!(exists(&two) && exists(crate::jobs::IMAGE));
    // gc:1's manifest and config went with it; its layers, which gc:2 shares, stayed: gc:2's
    // manifest, config and 3 layers are left.
    let blobs = |dir: &Path| -> usize { std::fs::read_dir(dir).unwrap().count() };
    assert_eq!(blobs(&store.dir().join("blobs/sha256")), 5);

    crate::jobs::stop(&mut h.client, &id).await;
    let (_, again) = pull_rpc(&mut h.client, &one).await;
    assert!(exists(&one));
    assert!(
        !exists(crate::jobs::IMAGE),
        "the image no job runs any more stayed"
    );
    assert!(!exists(&image_two.manifest_digest) && !exists(&two));
    assert_ne!(again.manifest_digest, image_two.manifest_digest);
}

/// A multi-platform image (an index with an entry for another architecture first): the pull
/// takes the host's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_index_is_resolved_to_the_host_platform() {
    let test = "an_image_index_is_resolved_to_the_host_platform";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let (host_arch, other_arch) = if std::env::consts::ARCH == "aarch64" {
        ("arm64", "amd64")
    } else {
        ("amd64", "arm64")
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    testing::busybox_layout(&layout, "app:1").unwrap();
    testing::push_layer(&layout, "app:1", &[file("etc/arch", b"right\n")]).unwrap();
    let right = testing::manifest_descriptor(&layout, "app:1").unwrap();
    testing::push_layer(&layout, "app:1", &[file("etc/wrong", b"wrong\n")]).unwrap();
    let wrong = testing::manifest_descriptor(&layout, "app:1").unwrap();
    let entry = |d: &oci_spec::image::Descriptor, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d.digest().to_string(),
            "size": d.size(),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&wrong, other_arch), entry(&right, host_arch)],
    }))
    .unwrap();
    let index_digest = testing::write_blob(&layout, &index).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    registry.push_with(&layout, "multi", "t/multi:1", &["--all"]);

    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path()).unwrap();
    let host = registry.host();
    let policy = policy(std::slice::from_ref(&host), &registry.ca());
    let record = pull_with(
        &store,
        &policy,
        &format!("{host}/t/multi:1"),
        Some(&creds()),
    )
    .await
    .unwrap();
    assert_eq!(record.manifest_digest, right.digest().to_string());
    assert!(record.rootfs.join("etc/arch").is_file());
    assert!(!record.rootfs.join("etc/wrong").exists());
}
