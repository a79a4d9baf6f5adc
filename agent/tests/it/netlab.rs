//! A network lab for the job-networking tests: two network namespaces made for one test and
//! removed with it.
//!
//! - "internet" (`fogi-*`): the fake internet. An HTTP server on 198.51.100.10 and
//!   2001:db8:2::10 (python's `http.server`), a DNS server on 198.51.100.53 (dnsmasq) that
//!   answers `files.example.test` with both, and the uplink's far end, 203.0.113.1 and
//!   2001:db8:1::1.
//! - "host" (`fogh-*`): where the agent runs (`nsenter --net`). Its only uplink is a veth to
//!   the internet namespace (203.0.113.2, 2001:db8:1::2, default routes through it), plus a
//!   veth pair of its own on a private address (192.168.77.1) standing for the operator's LAN.
//!
//! No packet of a test leaves these namespaces: the internet namespace has no other interface.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The HTTP server's IPv4 and IPv6 addresses in the internet namespace.
pub(crate) const WEB4: &str = "198.51.100.10";
pub(crate) const WEB6: &str = "2001:db8:2::10";
/// The name the DNS server answers with them.
pub(crate) const WEB_NAME: &str = "files.example.test";
/// The DNS server's address.
pub(crate) const DNS: &str = "198.51.100.53";
/// The host namespace's uplink address (published ports are reached here).
pub(crate) const HOST4: &str = "203.0.113.2";
/// The private address in the host namespace.
pub(crate) const LAN4: &str = "192.168.77.1";
/// The file the HTTP server serves, and its text.
pub(crate) const HELLO: (&str, &str) = ("hello.txt", "hello from the fake internet");

pub(crate) struct NetLab {
    pub(crate) inet: String,
    pub(crate) host: String,
    /// Where the lab's files are (the web root among them).
    pub(crate) dir: PathBuf,
    servers: Vec<Child>,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (packaging/setup-debian.sh --test installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    /// Makes the namespaces, their links and servers, and waits until the servers answer.
    pub(crate) fn new(dir: &Path) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = format!(
            "{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Self {
            inet: format!("fogi-{n}"),
            host: format!("fogh-{n}"),
            dir: dir.to_owned(),
            servers: Vec::new(),
        };
        let (far, near) = (format!("fv{n}a"), format!("fv{n}b"));
        let (i, h) = (lab.inet.as_str(), lab.host.as_str());
        run("ip", &["netns", "add", i]);
        run("ip", &["netns", "add", h]);
        let steps: &[&[&str]] = &[
            &[
                "link", "add", &far, "netns", i, "type", "veth", "peer", "name", &near, "netns", h,
            ],
            &["-n", i, "link", "set", "lo", "up"],
            &["-n", h, "link", "set", "lo", "up"],
            &["-n", i, "addr", "add", "203.0.113.1/24", "dev", &far],
            &[
                "-n",
                i,
                "addr",
                "add",
                "2001:db8:1::1/64",
                "dev",
                &far,
                "nodad",
            ],
            &["-n", i, "link", "set", &far, "up"],
            &["-n", h, "addr", "add", "203.0.113.2/24", "dev", &near],
            &[
                "-n",
                h,
                "addr",
                "add",
                "2001:db8:1::2/64",
                "dev",
                &near,
                "nodad",
            ],
            &["-n", h, "link", "set", &near, "up"],
            &["-n", h, "route", "add", "default", "via", "203.0.113.1"],
            &[
                "-n",
                h,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "2001:db8:1::1",
            ],
            &["-n", i, "addr", "add", "198.51.100.10/32", "dev", "lo"],
            &["-n", i, "addr", "add", "198.51.100.53/32", "dev", "lo"],
            &["-n", i, "addr", "add", "2001:db8:2::10/128", "dev", "lo"],
            &[
                "-n", h, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
            ],
            &["-n", h, "link", "set", "lan1", "up"],
            &["-n", h, "addr", "add", "192.168.77.1/24", "dev", "lan0"],
            &["-n", h, "link", "set", "lan0", "up"],
        ];
        for step in steps {
            run("ip", step);
        }
        let mut lab = lab;
        lab.start_servers();
        lab
    }

    /// `program args` in the internet namespace.
    pub(crate) fn in_inet(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.inet, program]);
        cmd
    }

    /// `program args` in the host namespace: its network namespace only (`nsenter`), not a
    /// mount namespace of its own as `ip netns exec` makes, whose fresh `/sys` would hide the
    /// cgroup hierarchies runc needs.
    pub(crate) fn in_host(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Output of `program args` in the host namespace (it must succeed).
    pub(crate) fn host_output(&self, program: &str, args: &[&str]) -> String {
        let out = self.in_host(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start_servers(&mut self) {
        let web = self.dir.join("web");
        std::fs::create_dir_all(&web).unwrap();
        std::fs::write(web.join(HELLO.0), HELLO.1).unwrap();
        // 6,250,000 bytes: 5 s at 10 Mbit/s.
        std::fs::write(web.join("big.bin"), vec![7u8; 6_250_000]).unwrap();
        let http = self
            .in_inet("python3")
            .args(["-m", "http.server", "80", "--bind", "::", "--directory"])
            .arg(&web)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(http);
        let dns = self
            .in_inet("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=198.51.100.53",
                "--pid-file=",
                "--user=root",
            ])
            .arg(format!("--address=/{WEB_NAME}/{WEB4}"))
            .arg(format!("--address=/{WEB_NAME}/{WEB6}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dnsmasq (setup installs dnsmasq-base): {e}"));
        self.servers.push(dns);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.serving() {
            assert!(
                Instant::now() < deadline,
                "the lab's servers did not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the HTTP server answers and the DNS server resolves.
    fn serving(&self) -> bool {
        let probe = format!(
            "import socket,urllib.request\n\
             urllib.request.urlopen('http://{WEB4}/{}', timeout=1).read()\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(1)\n\
             q=b''.join(bytes([len(p)])+p.encode() for p in '{WEB_NAME}'.split('.'))\n\
             s.sendto(bytes.fromhex('123401000001000000000000')+q+bytes.fromhex('0000010001'),('{DNS}',53))\n\
             assert len(s.recv(512))>12",
            HELLO.0
        );
        self.in_inet("python3")
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in [&self.host, &self.inet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
