//! Jobs' networks, end to end: the agent (`fog-agent serve`) runs in the host namespace of a
//! [`NetLab`] with the default CNI network (Debian's plugins, the agent's isolation table),
//! and busybox jobs reach the lab's fake internet, are refused everything else, publish ports,
//! are held to rate limits and have their traffic counted.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::jobs::{ended, get, import_busybox, start, stop, unique, wait_for, Cleanup, HEAVY, MIB};
use crate::netlab::{self, NetLab};

/// The agent's metrics port in the host namespace (a host port jobs must not reach).
const METRICS_PORT: u16 = 9464;

/// `fog-agent serve` in a lab's host namespace.
struct LabAgent {
    child: Child,
    config: fog_agent::config::Config,
    config_path: PathBuf,
    log: PathBuf,
    run_dir: PathBuf,
}

impl LabAgent {
    fn config(dir: &Path) -> (String, fog_agent::config::Config) {
        let cgroup_parent = unique("fog-agent-it-net");
        let toml = format!(
            "[api]\nlisten = []\nunix_socket = {sock:?}\n\
             [state]\ndir = {state:?}\n\
             [tpm]\ntcti = {tcti:?}\n\
             [bench]\nrun_on_start = false\n\
             [capacity]\nnetwork_bits_per_second = 20000000\n\
             [metrics]\nlisten = \"0.0.0.0:{METRICS_PORT}\"\n\
             [jobs]\ncgroup_parent = {cgroup_parent:?}\ntelemetry_interval_millis = 200\n\
             [jobs.network]\nrun_dir = {run:?}\ndns = [{dns:?}]\npublish_address = {host:?}\n\
             port_range = \"31000-31001\"\n",
            sock = dir.join("agent.sock"),
            state = dir.join("state"),
            tcti = crate::support::NO_TPM_TCTI,
            run = dir.join("net"),
            dns = netlab::DNS,
            host = netlab::HOST4,
        );
        let config = fog_agent::config::Config::parse(&toml, "agent.toml").unwrap();
        (toml, config)
    }

    fn start(lab: &NetLab, dir: &Path) -> Self {
        let (toml, config) = Self::config(dir);
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, toml).unwrap();
        let run_dir = dir.join("net");
        let log = dir.join("agent.log");
        let child = Self::spawn(lab, &config, &config_path, &log);
        Self {
            child,
            config,
            config_path,
            log,
            run_dir,
        }
    }

    fn spawn(lab: &NetLab, config: &fog_agent::config::Config, path: &Path, log: &Path) -> Child {
        let socket = &config.api.unix_socket;
        let _ = std::fs::remove_file(socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = lab
            .in_host(env!("CARGO_BIN_EXE_fog-agent"))
            .arg("serve")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the agent did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// SIGKILL, then a new agent on the same state.
    fn kill_and_restart(&mut self, lab: &NetLab) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(lab, &self.config, &self.config_path, &self.log);
    }

    async fn client(&self) -> AgentClient<Channel> {
        crate::support::unix_client(&self.config.api.unix_socket).await
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.config.jobs.dir_under(&self.config.state.dir).join(id)
    }

    fn stdout(&self, id: &str) -> String {
        std::fs::read_to_string(self.job_dir(id).join("stdout.log")).unwrap_or_default()
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Jobs' namespace files are mount points: unmounted so the temp dir can go.
        if let Ok(entries) = std::fs::read_dir(self.run_dir.join("netns")) {
            for entry in entries.flatten() {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(entry.path())
                    .output();
            }
        }
    }
}

/// A busybox job running `script` with the given published ports.
fn job(id: &str, script: &str, ports: &[(u32, pb::PortProtocol)]) -> pb::JobSpec {
    pb::JobSpec {
        job_id: id.to_owned(),
        image: crate::jobs::IMAGE.to_owned(),
        command: vec!["/bin/sh".into(), "-c".into(), script.to_owned()],
        resources: Some(pb::JobResources {
            cpu_millicores: 500,
            memory_bytes: 64 * MIB,
            pids: 64,
            ..pb::JobResources::default()
        }),
        ports: ports
            .iter()
            .map(|&(container_port, protocol)| pb::PortMapping {
                container_port,
                protocol: protocol.into(),
            })
            .collect(),
        ..pb::JobSpec::default()
    }
}

fn running(job: &pb::Job) -> bool {
    job.state() == pb::JobState::Running
}

/// The test's own view of a lab: the agent in it, a client, and cleanup of its jobs.
struct Rig {
    // Dropped in this order: containers, the agent, then the namespaces and the dir.
    _cleanup: Cleanup,
    agent: LabAgent,
    lab: NetLab,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> (Self, AgentClient<Channel>) {
        let dir = tempfile::tempdir().unwrap();
        let lab = NetLab::new(dir.path());
        let agent = LabAgent::start(&lab, dir.path());
        let mut client = agent.client().await;
        import_busybox(&mut client, dir.path()).await;
        let rig = Self {
            _cleanup: Cleanup::new(&agent.config),
            agent,
            lab,
            _dir: dir,
        };
        (rig, client)
    }

    /// Text a TCP client in the internet namespace reads from `host:port`.
    fn fetch_from_inet(&self, port: u32) -> String {
        let script = format!(
            "import socket\ns=socket.create_connection(('{}',{port}),timeout=5)\nprint(s.recv(100).decode())",
            netlab::HOST4
        );
        let out = self
            .lab
            .in_inet("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// What is left in the host namespace of jobs' networks: veths, IPAM allocations, NAT and
    /// port-forwarding rules naming a job, namespace files.
    fn leftovers(&self, ids: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        let links = self
            .lab
            .host_output("ip", &["-o", "link", "show", "type", "veth"]);
        // The uplink is a veth too.
        found.extend(
            links
                .lines()
                .filter(|l| !l.contains(": fv") && !l.contains(": lan"))
                .map(|l| format!("link: {l}")),
        );
        let ipam = self.agent.run_dir.join("ipam/fog-jobs");
        if let Ok(entries) = std::fs::read_dir(&ipam) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    found.push(format!("IPAM allocation: {name}"));
                }
            }
        }
        let rules = self.lab.host_output("iptables-save", &[]);
        let rules6 = self.lab.host_output("ip6tables-save", &[]);
        for id in ids {
            for line in rules.lines().chain(rules6.lines()) {
                if line.contains(id) {
                    found.push(format!("rule: {line}"));
                }
            }
        }
        for dir in ["netns", "cache"] {
            if let Ok(entries) = std::fs::read_dir(self.agent.run_dir.join(dir)) {
                found.extend(
                    entries
                        .flatten()
                        .map(|e| format!("{dir}: {:?}", e.file_name())),
                );
            }
        }
        found
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaches_the_internet_by_name_and_nothing_private() {
    let _heavy = HEAVY.lock().await;
    let (rig, mut client) = Rig::start().await;
    // A second job, whose address the first must not reach.
    let other = unique("net-other");
    start(
        &mut client,
        job(
            &other,
            "exec busybox nc -ll -p 8080 -e busybox echo other",
            &[],
        ),
    )
    .await;
    let other_job = wait_for(&mut client, &other, Duration::from_secs(30), running).await;
    let other_ip = other_job.addresses[0].split('/').next().unwrap().to_owned();
    let gateway = "10.89.0.1";
    let refused = [
        format!("{} {METRICS_PORT}", netlab::HOST4),
        format!("{gateway} {METRICS_PORT}"),
        format!("{} {METRICS_PORT}", netlab::LAN4),
        format!("{other_ip} 8080"),
        "169.254.169.254 80".to_owned(),
    ];
    let probes: String = refused
        .iter()
        .map(|target| {
            format!(
                "t0=$(cut -d' ' -f1 /proc/uptime)\n\
                 r=$(busybox nc -w 5 {target} </dev/null 2>&1)\n\
                 rc=$?\n\
                 t1=$(cut -d' ' -f1 /proc/uptime)\n\
                 echo \"probe {target}: $r rc=$rc seconds=$(awk \"BEGIN {{ print $t1 - $t0 }}\")\"\n"
            )
        })
        .collect();
    let script = format!(
        "set -u\n\
         echo \"v4: $(busybox wget -q -O - http://{name}/{file} 2>&1)\"\n\
         echo \"v6: $(busybox wget -q -O - 'http://[{web6}]/{file}' 2>&1)\"\n\
         {probes}",
        name = netlab::WEB_NAME,
        file = netlab::HELLO.0,
        web6 = netlab::WEB6,
    );
    let id = unique("net-world");
    start(&mut client, job(&id, &script, &[])).await;
    let done = wait_for(&mut client, &id, Duration::from_secs(60), ended).await;
    let out = rig.agent.stdout(&id);
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}\n{out}");
    assert!(
        done.addresses.iter().any(|a| a.starts_with("10.89.")),
        "{done:?}"
    );
    assert!(
        out.contains(&format!("v4: {}", netlab::HELLO.1)),
        "IPv4 by name:\n{out}\n{}",
        rig.agent.agent_log()
    );
    assert!(
        out.contains(&format!("v6: {}", netlab::HELLO.1)),
        "IPv6:\n{out}"
    );
    for target in &refused {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("probe {target}:")))
            .unwrap_or_else(|| panic!("no probe of {target}:\n{out}"));
        // Refused at the first packet: a reset (connection refused) or an ICMP error (no route
        // to host) at once, not an ARP or connect timeout.
        let seconds: f64 = line
            .rsplit_once("seconds=")
            .and_then(|(_, s)| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            (line.contains("refused") || line.contains("No route to host"))
                && !line.contains("rc=0")
                && seconds < 1.0,
            "{line}"
        );
    }
    stop(&mut client, &other).await;
    let left = rig.leftovers(&[&id, &other]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_are_distinct_reachable_and_freed() {
    let _heavy = HEAVY.lock().await;
    let (rig, mut client) = Rig::start().await;
    let serve = |text: &str| format!("exec busybox nc -ll -p 8080 -e busybox echo {text}");
    let tcp = [(8080, pb::PortProtocol::Tcp)];
    let (a, b, c) = (unique("pub-a"), unique("pub-b"), unique("pub-c"));
    start(&mut client, job(&a, &serve("from-a"), &tcp)).await;
    start(&mut client, job(&b, &serve("from-b"), &tcp)).await;
    let ja = wait_for(&mut client, &a, Duration::from_secs(30), running).await;
    let jb = wait_for(&mut client, &b, Duration::from_secs(30), running).await;
    let (pa, pb_) = (&ja.published_ports[0], &jb.published_ports[0]);
    assert_ne!(pa.host_port, pb_.host_port, "{pa:?} {pb_:?}");
    for p in [pa, pb_] {
        assert!((31000..=31001).contains(&p.host_port), "{p:?}");
        assert_eq!(p.host_address, netlab::HOST4);
        assert_eq!(p.container_port, 8080);
    }
    assert_eq!(rig.fetch_from_inet(pa.host_port), "from-a");
    assert_eq!(rig.fetch_from_inet(pb_.host_port), "from-b");
    // The range (two ports) is full: a third job is refused before it is created.
    let err = client
        .start_job(pb::StartJobRequest {
            spec: Some(job(&c, &serve("from-c"), &tcp)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().starts_with("ports: "), "{err:?}");
    // Ended, a job gives its port back.
    stop(&mut client, &a).await;
    start(&mut client, job(&c, &serve("from-c"), &tcp)).await;
    let jc = wait_for(&mut client, &c, Duration::from_secs(30), running).await;
    assert_eq!(jc.published_ports[0].host_port, pa.host_port);
    assert_eq!(rig.fetch_from_inet(pa.host_port), "from-c");
    stop(&mut client, &b).await;
    stop(&mut client, &c).await;
    let left = rig.leftovers(&[&a, &b, &c]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_and_traffic_is_counted() {
    let _heavy = HEAVY.lock().await;
    let (rig, mut client) = Rig::start().await;
    // 10 Mbit/s into the job, timed inside it (centiseconds from /proc/uptime).
    let limited = unique("net-rate");
    let mut spec = job(
        &limited,
        &format!(
            "t0=$(cut -d' ' -f1 /proc/uptime)\n\
             n=$(busybox wget -q -O - http://{}/big.bin | wc -c)\n\
             t1=$(cut -d' ' -f1 /proc/uptime)\n\
             echo \"bytes=$n t0=$t0 t1=$t1\"",
            netlab::WEB4
        ),
        &[],
    );
    // The lab's capacity is 20 Mbit/s each way: 30 do not fit.
    spec.resources.as_mut().unwrap().ingress_bits_per_second = 30_000_000;
    let err = client
        .start_job(pb::StartJobRequest {
            spec: Some(spec.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .starts_with("resources.ingress_bits_per_second: "),
        "{err:?}"
    );
    spec.resources.as_mut().unwrap().ingress_bits_per_second = 10_000_000;
    start(&mut client, spec).await;
    let done = wait_for(&mut client, &limited, Duration::from_secs(60), ended).await;
    let out = rig.agent.stdout(&limited);
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}\n{out}");
    let field = |name: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with("bytes=")).unwrap();
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (bytes, seconds) = (field("bytes"), field("t1") - field("t0"));
    assert_eq!(bytes, 6_250_000.0, "{out}");
    let rate = bytes * 8.0 / seconds;
    assert!(
        (9_000_000.0..=11_000_000.0).contains(&rate),
        "{rate} bit/s over {seconds} s"
    );
    // Counted traffic: 1000 UDP datagrams of 1000 bytes to a published port. Each is 1042
    // bytes on the veth (8 UDP + 20 IPv4 + 14 Ethernet header bytes).
    let counted = unique("net-count");
    start(
        &mut client,
        job(
            &counted,
            // Nothing listens: the datagrams are counted as they reach the job all the same.
            "exec sleep 3600",
            &[(5000, pb::PortProtocol::Udp)],
        ),
    )
    .await;
    let before = wait_for(&mut client, &counted, Duration::from_secs(30), |j| {
        running(j) && j.last_sample.is_some()
    })
    .await;
    let port = before.published_ports[0].host_port;
    let received = |j: &pb::Job| j.usage.as_ref().unwrap().network_receive_bytes;
    let base = received(&before);
    let send = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range(1000):\n    s.sendto(b'x'*1000,('{}',{port}))\n    time.sleep(0.0005)",
        netlab::HOST4
    );
    let sent = rig
        .lab
        .in_inet("python3")
        .args(["-c", &send])
        .status()
        .unwrap();
    assert!(sent.success());
    let expected = 1000 * 1042;
    let after = wait_for(&mut client, &counted, Duration::from_secs(30), |j| {
        received(j) >= base + expected
    })
    .await;
    // A few more samples: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let last = get(&mut client, &counted).await;
    let delta = received(&last) - base;
    assert!(
        delta as f64 <= expected as f64 * 1.01,
        "counted {delta} bytes for {expected} sent: {after:?}"
    );
    let sample = last.last_sample.as_ref().unwrap();
    assert!(
        sample.network_receive_bytes.unwrap() >= base + expected,
        "{sample:?}"
    );
    stop(&mut client, &counted).await;
    let ended_job = get(&mut client, &counted).await;
    assert!(received(&ended_job) >= base + expected, "{ended_job:?}");
}

#[test]
fn sigkill_of_the_agent_keeps_jobs_reachable_and_their_networks_are_removed_at_the_end() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _heavy = HEAVY.blocking_lock();
    let (mut rig, mut client) = rt.block_on(Rig::start());
    let ids = [unique("kill-a"), unique("kill-b")];
    let mut ports = Vec::new();
    let mut before = Vec::new();
    rt.block_on(async {
        for id in &ids {
            let script = format!("exec busybox nc -ll -p 8080 -e busybox echo {id}");
            start(
                &mut client,
                job(id, &script, &[(8080, pb::PortProtocol::Tcp)]),
            )
            .await;
        }
        for id in &ids {
            let j = wait_for(&mut client, id, Duration::from_secs(30), running).await;
            ports.push(j.published_ports[0].host_port);
        }
    });
    for (id, port) in ids.iter().zip(&ports) {
        assert_eq!(&rig.fetch_from_inet(*port), id);
    }
    rt.block_on(async {
        for id in &ids {
            let j = wait_for(&mut client, id, Duration::from_secs(10), |j| {
                j.usage.as_ref().unwrap().network_receive_bytes > 0
            })
            .await;
            before.push(j.usage.unwrap());
        }
    });
    rig.agent.kill_and_restart(&rig.lab);
    let mut client = rt.block_on(rig.agent.client());
    for (id, port) in ids.iter().zip(&ports) {
        assert_eq!(&rig.fetch_from_inet(*port), id, "after the restart");
    }
    rt.block_on(async {
        for (id, usage) in ids.iter().zip(&before) {
            let j = get(&mut client, id).await;
            assert_eq!(j.state(), pb::JobState::Running, "{j:?}");
            let now = j.usage.unwrap();
            assert!(
                now.network_receive_bytes >= usage.network_receive_bytes
                    && now.network_transmit_bytes >= usage.network_transmit_bytes,
                "{usage:?} -> {now:?}"
            );
        }
        for id in &ids {
            stop(&mut client, id).await;
        }
    });
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let left = rig.leftovers(&refs);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_plugins_a_job_is_refused_naming_what_is_missing() {
    // The check comes before anything touches the host's network, so this agent runs in the
    // machine's own namespace.
    let mut h = crate::jobs::Harness::start_configured(
        |c| {
            c.jobs.network =
                fog_agent::config::JobNetwork::Cni(Box::new(fog_agent::config::CniNetwork {
                    plugin_dir: "/nonexistent/cni".into(),
                    ..Default::default()
                }))
        },
        |_, o| o,
    )
    .await;
    let err = h
        .client
        .start_job(pb::StartJobRequest {
            spec: Some(job(&unique("no-plugins"), "true", &[])),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("\"bridge\" is not in /nonexistent/cni")
            && err.message().contains("containernetworking-plugins"),
        "{err:?}"
    );
}
