//! A swtpm harness for tests (feature `test-util`): each [`Swtpm`] gets its own private local
//! CA, EK certificates and state in a temporary directory (absolute paths), listens on free
//! loopback ports, is started with `startup-clear`, and is killed (by its pid) on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tcti::Tcti;

pub mod receipt_cases;
pub mod receipts;

/// How long to wait for swtpm to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the harness (they carry the failing command's stderr).
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// A tool could not be run or failed.
    #[error("{what}: {detail}")]
    Tool {
        /// The command.
        what: String,
        /// Its error or stderr.
        detail: String,
    },
}

fn tool_err(what: &str, detail: impl ToString) -> SwtpmError {
    SwtpmError::Tool {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// A running swtpm with its own CA.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Manufactures a TPM (EK certificates from a fresh private CA) and starts it.
    pub fn start() -> Result<Self, SwtpmError> {
        let dir = tempfile::Builder::new()
            .prefix("fog-swtpm-")
            .tempdir()
            .map_err(|e| tool_err("tempdir", e))?;
        let d = dir
            .path()
            .canonicalize()
            .map_err(|e| tool_err("canonicalize", e))?;
        write_configs(&d)?;
        run(Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(d.join("state"))
            .arg("--config")
            .arg(d.join("swtpm_setup.conf"))
            .args(["--create-ek-cert", "--create-platform-cert", "--overwrite"]))?;
        let mut tpm = Self {
            dir,
            port: 0,
            child: None,
        };
        tpm.spawn()?;
        Ok(tpm)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) -> Result<(), SwtpmError> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port_pair()?;
            let d = self.dir.path().to_path_buf();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--server"])
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", self.state_dir().display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .arg("--log")
                .arg(format!("file={}", d.join("swtpm.log").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| tool_err("swtpm", e))?;
            self.child = Some(child);
            self.port = port;
            if self.wait_ready() {
                return Ok(());
            }
            last = std::fs::read_to_string(d.join("swtpm.log")).unwrap_or_default();
            self.kill();
        }
        Err(tool_err("swtpm did not start", last))
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The TCTI reaching this swtpm.
    pub fn tcti(&self) -> Tcti {
        Tcti::Swtpm {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// The private CA's root and intermediate certificates (PEM), to use as trust anchors.
    pub fn trust_anchors_pem(&self) -> Result<Vec<u8>, SwtpmError> {
        let ca = self.dir.path().join("localca");
        let mut pem = std::fs::read(ca.join("swtpm-localca-rootca-cert.pem"))
            .map_err(|e| tool_err("read root CA", e))?;
        pem.extend(
            std::fs::read(ca.join("issuercert.pem")).map_err(|e| tool_err("read issuer CA", e))?,
        );
        Ok(pem)
    }

    /// Writes the trust anchors to a file in the harness directory and returns its path.
    pub fn trust_anchors_file(&self) -> Result<PathBuf, SwtpmError> {
        let path = self.dir.path().join("anchors.pem");
        std::fs::write(&path, self.trust_anchors_pem()?)
            .map_err(|e| tool_err("write anchors", e))?;
        Ok(path)
    }

    /// A scratch directory that lives as long as the harness.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Power-cycles the TPM: orderly `TPM2_Shutdown(CLEAR)`, stop, start again (a TPM reset:
    /// resetCount goes up, the clock stays safe).
    pub fn restart(&mut self) -> Result<(), SwtpmError> {
        let tpm = crate::device::Tpm::open(&self.tcti())
            .map_err(|e| tool_err("open before restart", e))?;
        tpm.shutdown().map_err(|e| tool_err("TPM2_Shutdown", e))?;
        drop(tpm);
        self.kill();
        self.spawn()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_configs(d: &Path) -> Result<(), SwtpmError> {
    let w = |name: &str, text: String| {
        std::fs::write(d.join(name), text).map_err(|e| tool_err(name, e))
    };
    std::fs::create_dir_all(d.join("localca")).map_err(|e| tool_err("mkdir localca", e))?;
    std::fs::create_dir_all(d.join("state")).map_err(|e| tool_err("mkdir state", e))?;
    let d = d.display();
    w(
        "swtpm-localca.conf",
        format!(
            "statedir = {d}/localca\nsigningkey = {d}/localca/signkey.pem\nissuercert = {d}/localca/issuercert.pem\ncertserial = {d}/localca/certserial\n"
        ),
    )?;
    w(
        "swtpm_setup.conf",
        format!(
            "create_certs_tool= /usr/bin/swtpm_localca\ncreate_certs_tool_config = {d}/swtpm-localca.conf\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n"
        ),
    )?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), SwtpmError> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| tool_err(&what, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(tool_err(
            &what,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

/// A port p such that p and p + 1 are free on 127.0.0.1 right now.
fn free_port_pair() -> Result<u16, SwtpmError> {
    for _ in 0..50 {
        let a = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| tool_err("bind", e))?;
        let port = a
            .local_addr()
            .map_err(|e| tool_err("local_addr", e))?
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(tool_err(
        "free ports",
        "no free pair of adjacent ports found",
    ))
}
