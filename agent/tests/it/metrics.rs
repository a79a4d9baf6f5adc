//! `/metrics` of a running `fog-agent serve`: systemd readiness over a real `NOTIFY_SOCKET`,
//! the body validated by `promtool check metrics` (Debian `prometheus`) and, as OpenMetrics,
//! by the Python reference parser (`prometheus_client`), values checked against the OS's own
//! files, attestation outcomes counted through a real (failing) TPM connection, HTTPS, and
//! the refusals (other paths, other methods).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fog-agent serve` with `/metrics` on a free port and a notify socket; killed on drop.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    metrics_port: u16,
    notify: UnixDatagram,
}

impl Agent {
    fn start(extra_metrics: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        assert!(agent()
            .args(["dev-certs", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success());
        let (grpc_port, metrics_port) = (free_port(), free_port());
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = [\"127.0.0.1:{grpc_port}\"]\nunix_socket = \"{d}/run/agent.sock\"\n\
                 tls_cert = \"{c}/server.pem\"\ntls_key = \"{c}/server.key\"\nclient_ca = \"{c}/ca.pem\"\n\
                 [state]\ndir = \"{d}/state\"\n[telemetry]\nmin_interval_millis = 100\n\
                 [bench]\nrun_on_start = false\n[tpm]\ntcti = \"swtpm:host=127.0.0.1,port=1\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nsample_interval_millis = 200\n{extra_metrics}",
                d = dir.path().display(),
                c = certs.display()
            ),
        )
        .unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let child = agent()
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stderr(std::fs::File::create(dir.path().join("served.log")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            dir,
            metrics_port,
            notify,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("served.log")).unwrap_or_default()
    }

    /// The next notification, as text.
    fn next_notification(&self) -> String {
        let mut buf = [0u8; 512];
        let n = self
            .notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification ({e}); log:\n{}", self.log()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/agent.sock")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        crate::support::terminate(&mut self.child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response: status, headers (lowercase names), body.
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request over a fresh connection.
fn http(port: u16, method: &str, path: &str, accept: Option<&str>) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{accept}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked HTTP/1.1 body (node_exporter's large responses are chunked).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The value of the series written exactly as `series` (name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Scrapes until the first host sample is in (the sampler's first tick) and the benchmark state
/// (known once the daemon's first inventory is collected).
fn scrape_with_host(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = http(port, "GET", "/metrics", None);
        assert_eq!(reply.status, 200);
        if reply.body.contains("node_memory_MemTotal_bytes ")
            && reply.body.contains("fog_benchmark_state{")
        {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "no host sample: {}", reply.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics`: the body must parse, and the only lint findings allowed are the
/// camelCase names node_exporter itself uses (`node_memory_MemTotal_bytes`...), which we keep
/// for dashboard compatibility (promtool lints node_exporter's own output the same way).
fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; packaging/setup-debian.sh --test)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let camel_case = |line: &str| {
        line.starts_with("node_memory_")
            && line.ends_with(" metric names should be written in 'snake_case' not 'camelCase'")
    };
    match out.status.code() {
        Some(0) => {}
        // 3 = lint findings (1 would be a parse error).
        Some(3) => {
            assert!(
                report.lines().all(camel_case),
                "promtool check metrics:\n{report}\n{body}"
            );
            assert!(report.contains("node_memory_MemTotal_bytes metric names"));
        }
        _ => panic!(
            "promtool check metrics failed ({}):\n{report}\n{body}",
            out.status
        ),
    }
}

fn meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("FOG_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python venv at {} (packaging/setup-debian.sh --test)",
        venv.display()
    );
    python
}

#[test]
fn metrics_endpoint_of_the_running_daemon() {
    let mut served = Agent::start("");
    let ready = served.next_notification();
    assert!(ready.starts_with("READY=1"), "{ready}");
    // Ready means bound: the endpoint answers at once.
    let first = http(served.metrics_port, "GET", "/metrics", None);
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );

    // A failing quote (nothing listens at the TCTI) is counted as an attestation failure.
    let attest = agent()
        .arg("client")
        .arg("--addr")
        .arg(format!("unix:{}", served.socket().display()))
        .args(["attest", "--nonce", "00112233445566778899aabbccddeeff"])
        .output()
        .unwrap();
    assert!(!attest.status.success(), "no TPM here, the quote must fail");

    let stat_before = std::fs::read_to_string("/proc/stat").unwrap();
    let body = scrape_with_host(served.metrics_port);
    let stat_after = std::fs::read_to_string("/proc/stat").unwrap();
    promtool_check(&body);

    // Values against the OS.
    assert_eq!(
        value(&body, "node_memory_MemTotal_bytes"),
        Some((meminfo_kb("MemTotal") * 1024) as f64)
    );
    let cpus: Vec<&str> = stat_after
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .collect();
    let cpu_series = body
        .lines()
        .filter(|l| l.starts_with("node_cpu_seconds_total{"))
        .count();
    assert_eq!(cpu_series, cpus.len() * 8, "8 modes per CPU");
    // cpu0 user seconds: the sample was taken between the two readings of /proc/stat
    // (within the sampler interval before the scrape).
    let user = |stat: &str| -> f64 {
        let line = stat.lines().find(|l| l.starts_with("cpu0 ")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 100.0
    };
    let scraped = value(&body, "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"}").unwrap();
    assert!(
        scraped <= user(&stat_after) && scraped >= user(&stat_before) - 5.0,
        "{scraped} vs {} .. {}",
        user(&stat_before),
        user(&stat_after)
    );
    assert!(value(&body, "node_load1").is_some());
    assert!(value(&body, "node_network_receive_bytes_total{device=\"lo\"}").is_some());
    assert!(body.contains("node_filesystem_avail_bytes{"));
    assert!(body.contains("node_pressure_cpu_waiting_seconds_total "));
    assert_eq!(
        value(&body, "fog_capacity_cpu_cores{state=\"total\"}"),
        Some(cpus.len() as f64)
    );
    assert_eq!(
        value(&body, "fog_benchmark_state{state=\"pending\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &body,
            "fog_attestation_requests_total{operation=\"quote\",result=\"error\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(value(
        &body,
        "fog_attestation_last_failure_timestamp_seconds{operation=\"quote\"}"
    )
    .is_some());
    assert_eq!(
        value(&body, "fog_telemetry_subscribers"),
        Some(1.0),
        "the endpoint's own"
    );
    assert!(value(&body, "fog_telemetry_samples_total").unwrap() >= 1.0);
    assert_eq!(
        value(&body, "fog_telemetry_dropped_samples_total"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &body,
            "fog_telemetry_collector_errors_total{collector=\"cpu\"}"
        ),
        Some(0.0)
    );
    // The agent's own RSS against the kernel's view of the child.
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id())).unwrap();
    let vm_rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse::<f64>()
        .unwrap()
        * 1024.0;
    let rss = value(&body, "process_resident_memory_bytes").unwrap();
    assert!(
        rss > vm_rss * 0.5 && rss < vm_rss * 2.0,
        "{rss} vs VmRSS {vm_rss}"
    );
    assert!(value(&body, "process_cpu_seconds_total").unwrap() > 0.0);
    // No GPU on this machine: no GPU series at all (and never a zero that looks idle).
    assert!(!body.contains("fog_gpu_"), "{body}");

    // OpenMetrics on request, checked by the reference parser.
    let om = http(
        served.metrics_port,
        "GET",
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(om.status, 200);
    assert!(om.headers["content-type"].starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"));
    let mut parser = Command::new(venv_python())
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             fams = list(p(sys.stdin.read()))\nprint(len(fams))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(om.body.as_bytes())
        .unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "openmetrics parser: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families: usize = String::from_utf8_lossy(&parsed.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(families > 40, "{families} families");

    // Nothing else is served, and nothing changes state.
    assert_eq!(http(served.metrics_port, "GET", "/", None).status, 404);
    let post = http(served.metrics_port, "POST", "/metrics", None);
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    let head = http(served.metrics_port, "HEAD", "/metrics", None);
    assert_eq!((head.status, head.body.as_str()), (200, ""));

    let status = served.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    let stopping = served.next_notification();
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
}

#[test]
fn metrics_over_https_and_bad_tls_files_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("mcerts");
    assert!(agent()
        .args(["dev-certs", "--out"])
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    let mut served = Agent::start(&format!(
        "tls_cert = \"{c}/server.pem\"\ntls_key = \"{c}/server.key\"\n",
        c = certs.display()
    ));
    assert!(served.next_notification().starts_with("READY=1"));
    let script = format!(
        "import ssl, urllib.request\nctx = ssl.create_default_context(cafile='{ca}')\n\
         print(urllib.request.urlopen('https://localhost:{port}/metrics', context=ctx, timeout=20).read().decode())",
        ca = certs.join("ca.pem").display(),
        port = served.metrics_port
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("# TYPE process_cpu_seconds_total counter")
    );
    // Plain HTTP on the TLS port gets no metrics.
    let mut stream = TcpStream::connect(("127.0.0.1", served.metrics_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("process_cpu_seconds"));
    assert!(served.terminate().success());

    // A key file that is not a key: serve exits 1 naming the key.
    let bad = Agent::start(&format!(
        "tls_cert = \"{c}/server.pem\"\ntls_key = \"{c}/server.pem\"\n",
        c = certs.display()
    ));
    let mut bad = bad;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = bad.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    assert!(bad.log().contains("metrics.tls_key"), "{}", bad.log());
}

/// `# TYPE` lines: name -> type.
fn types(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// The label names of the first series of `name`.
fn label_names(body: &str, name: &str) -> Vec<String> {
    let line = body
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no series {name}"));
    let Some((_, rest)) = line.split_once('{') else {
        return Vec::new();
    };
    let labels = rest.split_once('}').unwrap().0;
    let mut names: Vec<String> = labels
        .split("\",")
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, _)| k.to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn node_metric_names_types_and_labels_match_node_exporter() {
    let exporter = Path::new("/usr/bin/prometheus-node-exporter");
    assert!(
        exporter.exists(),
        "prometheus-node-exporter missing (packaging/setup-debian.sh --test)"
    );
    let port = free_port();
    let mut node = Command::new(exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut served = Agent::start("");
    assert!(served.next_notification().starts_with("READY=1"));
    let ours = scrape_with_host(served.metrics_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let theirs = loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            drop(stream);
            break http(port, "GET", "/metrics", None).body;
        }
        assert!(Instant::now() < deadline, "node_exporter did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = node.kill();
    let _ = node.wait();

    let (our_types, their_types) = (types(&ours), types(&theirs));
    // Newer than the node_exporter in Debian 12 (1.5): the full line of /proc/pressure/cpu.
    let newer = ["node_pressure_cpu_stalled_seconds_total"];
    let mut compared = 0;
    for (name, kind) in our_types.iter().filter(|(n, _)| n.starts_with("node_")) {
        match their_types.get(name) {
            Some(theirs_kind) => {
                assert_eq!(kind, theirs_kind, "{name}: type");
                // A family node_exporter has but with no series on this host (e.g. no disks
                // it keeps) is compared by name and type only.
                if theirs
                    .lines()
                    .any(|l| l.starts_with(name.as_str()) && !l.starts_with('#'))
                {
                    assert_eq!(
                        label_names(&ours, name),
                        label_names(&theirs, name),
                        "{name}: label names"
                    );
                }
                compared += 1;
            }
            None => assert!(
                newer.contains(&name.as_str()),
                "{name}: not a node_exporter name"
            ),
        }
    }
    assert!(compared >= 20, "only {compared} node_* families compared");
    assert_eq!(
        value(&ours, "node_memory_MemTotal_bytes"),
        value(&theirs, "node_memory_MemTotal_bytes")
    );
    assert!(served.terminate().success());
}
