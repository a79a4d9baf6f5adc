//! The agent's configuration file (`/etc/fog-agent/agent.toml`): its typed form, parsing and
//! validation.
//!
//! Parsing is pure ([`Config::parse`] takes the file's text), so valid and invalid fixtures test
//! it without touching the environment. Unknown keys are errors (`deny_unknown_fields`); a file
//! may leave out any key or section, which then takes its default. The defaults are the values
//! in `packaging/agent.toml`, the commented default config shipped with the package (a test
//! checks that the two agree), so `fog-agent serve` runs with no file at all.
//!
//! Errors name the key: a TOML or type error gives the key path and line
//! (`agent.toml:3:1: api.listen: invalid socket address syntax`); semantic validation then
//! reports every bad value, each with its key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The default config file path.
pub const DEFAULT_PATH: &str = "/etc/fog-agent/agent.toml";

/// The commented default config shipped in `packaging/agent.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../packaging/agent.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[api]`: listeners, TLS and limits.
    pub api: ApiConfig,
    /// `[state]`: where the agent keeps its state.
    pub state: StateConfig,
    /// `[tpm]`: which TPM to use.
    pub tpm: TpmConfig,
    /// `[telemetry]`: the host telemetry sampler.
    pub telemetry: TelemetryConfig,
    /// `[capacity]`: what the host keeps for itself.
    pub capacity: CapacityConfig,
    /// `[bench]`: the daemon's benchmark runs.
    pub bench: BenchConfig,
    /// `[jobs]`: the job runner (OCI runtime, job dirs, limits).
    pub jobs: JobsConfig,
    /// `[metrics]`: the Prometheus `/metrics` endpoint.
    pub metrics: MetricsConfig,
}

/// `[jobs]`: how jobs run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The OCI runtime binary (runc; crun 1.8 refuses hybrid cgroup hosts).
    pub runtime: PathBuf,
    /// Where job dirs (bundle, logs, scratch, exit status) and the runtime's state live; empty =
    /// `<state dir>/jobs`.
    pub dir: PathBuf,
    /// Size cap of each job's stdout and stderr log file; output past it is dropped (counted).
    pub log_max_bytes: ByteSize,
    /// Time limit of a job whose spec gives none.
    pub default_time_limit_millis: u64,
    /// Largest time limit a spec may ask for.
    pub max_time_limit_millis: u64,
    /// The cgroup (below each controller's root) job cgroups are made under:
    /// `/<cgroup_parent>/<job id>`.
    pub cgroup_parent: String,
    /// Interval of the job telemetry loop (one loop samples every job's cgroup).
    pub telemetry_interval_millis: u64,
    /// How long an ended job is kept (its record, transitions, usage counters, logs and job
    /// dir) before it is forgotten; 0 = forever.
    pub retention_millis: u64,
    /// How a job's scratch dir is held to its `resources.scratch_bytes`.
    pub scratch_limit: ScratchLimit,
}

/// How a job's scratch dir is held to its size (`[jobs] scratch_limit`); see
/// [`crate::jobs::scratch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScratchLimit {
    /// Its own ext4 filesystem of that size, in a sparse image file, loop-mounted: a write past
    /// it fails with `ENOSPC`.
    #[default]
    Filesystem,
    /// A plain dir on the jobs dir's file system: the telemetry loop stops a job whose scratch
    /// dir has grown past its size (measured every 5th tick). For hosts without loop devices.
    Polled,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            runtime: PathBuf::from("/usr/sbin/runc"),
            dir: PathBuf::new(),
            log_max_bytes: ByteSize(16 * 1024 * 1024),
            default_time_limit_millis: 86_400_000,
            max_time_limit_millis: 604_800_000,
            cgroup_parent: "fog-agent".to_owned(),
            telemetry_interval_millis: 1000,
            retention_millis: 604_800_000,
            scratch_limit: ScratchLimit::Filesystem,
        }
    }
}

/// `[metrics]`: the Prometheus `/metrics` endpoint (HTTP, plain or TLS; no authentication, so
/// loopback by default; it exposes no secrets and changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// How often the host telemetry sampler runs while the endpoint is on; a scrape reads the
    /// newest sample and never collects one itself.
    pub sample_interval_millis: u64,
    /// Server certificate chain (PEM) for HTTPS; with `tls_key`, or both empty for plain HTTP.
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    pub tls_key: PathBuf,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            sample_interval_millis: 5_000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl JobsConfig {
    /// The jobs dir: [`Self::dir`], or `<state dir>/jobs` when empty.
    pub fn dir_under(&self, state_dir: &Path) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            state_dir.join("jobs")
        } else {
            self.dir.clone()
        }
    }

    /// [`Self::telemetry_interval_millis`] as a duration.
    pub fn telemetry_interval(&self) -> Duration {
        Duration::from_millis(self.telemetry_interval_millis)
    }
}

impl MetricsConfig {
    /// [`Self::sample_interval_millis`] as a duration.
    pub fn sample_interval(&self) -> Duration {
        Duration::from_millis(self.sample_interval_millis)
    }

    /// The certificate and key paths when TLS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.tls_cert.as_os_str().is_empty() && !self.tls_key.as_os_str().is_empty())
            .then_some((self.tls_cert.as_path(), self.tls_key.as_path()))
    }
}

/// `[bench]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchConfig {
    /// Run the quick suite in the background on start and when the hardware fingerprint
    /// changes, when nothing is cached for the fingerprint.
    pub run_on_start: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self { run_on_start: true }
    }
}

/// `[api]`: the gRPC listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP addresses to serve on (mutual TLS); empty serves no TCP.
    pub listen: Vec<SocketAddr>,
    /// The local admin door (mode 0600); an empty path serves no unix socket.
    pub unix_socket: PathBuf,
    /// The server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// The server's private key (PEM).
    pub tls_key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Serve plaintext on loopback addresses (development only; every caller is then admin).
    pub insecure_loopback: bool,
    /// Largest request or response message.
    pub max_message_bytes: ByteSize,
    /// Concurrent streams (RPCs) per connection.
    pub max_concurrent_streams: u32,
    /// Time limit of a unary RPC.
    pub request_timeout_millis: u64,
    /// On SIGTERM/SIGINT: how long open streams may take to end before the agent exits anyway.
    pub shutdown_grace_millis: u64,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The agent's state dir (database, TPM blobs, dev certificates).
    pub dir: PathBuf,
}

/// `[tpm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpmConfig {
    /// TCTI string: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `mssim:...` or
    /// `tabrmd`.
    pub tcti: String,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Shortest sample interval a subscriber may ask for.
    pub min_interval_millis: u64,
    /// Samples buffered per subscriber; a slower reader loses the oldest ones.
    pub queue_depth: usize,
    /// Subscribers allowed at once (all connections together).
    pub max_subscribers: usize,
}

/// `[capacity]`: the host's own reserve, subtracted from what is offered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// CPU kept for the host, in millicores (1000 = one logical CPU).
    pub reserve_cpu_millicores: u64,
    /// Memory kept for the host: a size (`"4 GiB"`) or a share of the total (`"10%"`).
    pub reserve_memory: Amount,
    /// Disk space kept on the state dir's filesystem: a size or a share.
    pub reserve_disk: Amount,
    /// GPUs kept for the host, by PCI bus id (`0000:01:00.0`).
    pub reserve_gpus: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 7443))],
            unix_socket: PathBuf::from("/run/fog-agent/agent.sock"),
            tls_cert: PathBuf::from("/etc/fog-agent/tls/server.pem"),
            tls_key: PathBuf::from("/etc/fog-agent/tls/server.key"),
            client_ca: PathBuf::from("/etc/fog-agent/tls/ca.pem"),
            insecure_loopback: false,
            max_message_bytes: ByteSize(4 * 1024 * 1024),
            max_concurrent_streams: 256,
            request_timeout_millis: 30_000,
            shutdown_grace_millis: 5_000,
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/fog-agent"),
        }
    }
}

impl Default for TpmConfig {
    fn default() -> Self {
        Self {
            tcti: "device:/dev/tpmrm0".to_owned(),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            min_interval_millis: 250,
            queue_depth: 16,
            max_subscribers: 4096,
        }
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            reserve_cpu_millicores: 1000,
            reserve_memory: Amount::Percent(10),
            reserve_disk: Amount::Percent(10),
            reserve_gpus: Vec::new(),
        }
    }
}

impl ApiConfig {
    /// [`Self::request_timeout_millis`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_millis)
    }

    /// [`Self::shutdown_grace_millis`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_millis)
    }

    /// The unix socket path, unless disabled with an empty path.
    pub fn unix_socket(&self) -> Option<&Path> {
        (!self.unix_socket.as_os_str().is_empty()).then_some(self.unix_socket.as_path())
    }
}

impl TelemetryConfig {
    /// [`Self::min_interval_millis`] as a duration.
    pub fn min_interval(&self) -> Duration {
        Duration::from_millis(self.min_interval_millis)
    }
}

/// A size in bytes, written in TOML as an integer or a string with a binary or decimal unit
/// (`"512 MiB"`, `"4GiB"`, `"10 GB"`, `"4096"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A size or a share of a total (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// A fixed number of bytes.
    Bytes(u64),
    /// Percent of the total, 0 to 100.
    Percent(u8),
}

impl Amount {
    /// The amount out of `total`, never more than `total`.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes.min(total),
            Self::Percent(pct) => {
                let part = u128::from(total) * u128::from(pct.min(100)) / 100;
                u64::try_from(part).unwrap_or(total)
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(f, "{bytes} bytes"),
            Self::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

/// Parses a size: digits, optional spaces, optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size (expected e.g. \"4 GiB\")"));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{digits:?} is too large"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses an [`Amount`]: `"N%"` or a size.
pub fn parse_amount(text: &str) -> Result<Amount, String> {
    match text.trim().strip_suffix('%') {
        Some(pct) => {
            let pct: u8 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage from 0% to 100%"))?;
            if pct > 100 {
                return Err(format!("{text:?} is more than 100%"));
            }
            Ok(Amount::Percent(pct))
        }
        None => parse_size(text).map(Amount::Bytes),
    }
}

/// An integer or a string, as TOML allows for sizes.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u64),
    String(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match IntOrString::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a size: an integer or a string like \"4 GiB\"")
        })? {
            IntOrString::Int(bytes) => Ok(Self(bytes)),
            IntOrString::String(text) => parse_size(&text)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match IntOrString::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a size (\"4 GiB\") or a share (\"10%\")")
        })? {
            IntOrString::Int(bytes) => Ok(Self::Bytes(bytes)),
            IntOrString::String(text) => parse_amount(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Syntax {
        /// File name (or `<embedded default>`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key path, e.g. `api.listen` (the section when no key applies).
        key: String,
        /// What was wrong.
        message: String,
    },
    /// Values are well-formed but do not make sense; each names its key.
    #[error("{origin}: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// File name.
        origin: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// One semantic problem with a config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `telemetry.min_interval_millis`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| syntax_error(text, origin, &err))?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Every semantic problem of this config (empty when valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &'static str, message: String| {
            if !ok {
                out.push(Problem { key, message });
            }
        };
        let api = &self.api;
        check(
            !api.listen.is_empty() || api.unix_socket().is_some(),
            "api.listen",
            "no listener: set api.listen or api.unix_socket".into(),
        );
        let plaintext = api.insecure_loopback;
        for addr in &api.listen {
            check(
                !plaintext || addr.ip().is_loopback(),
                "api.insecure_loopback",
                format!("plaintext is allowed on loopback addresses only, not {addr}"),
            );
        }
        if !api.listen.is_empty() && !plaintext {
            for (key, path) in [
                ("api.tls_cert", &api.tls_cert),
                ("api.tls_key", &api.tls_key),
                ("api.client_ca", &api.client_ca),
            ] {
                check(
                    !path.as_os_str().is_empty(),
                    key,
                    "required for mutual TLS on api.listen".into(),
                );
            }
        }
        if let Some(socket) = api.unix_socket() {
            check(
                socket.is_absolute(),
                "api.unix_socket",
                format!("must be an absolute path, not {}", socket.display()),
            );
        }
        check(
            (1024..=256 * 1024 * 1024).contains(&api.max_message_bytes.0),
            "api.max_message_bytes",
            format!(
                "{} bytes is outside 1 KiB to 256 MiB",
                api.max_message_bytes.0
            ),
        );
        check(
            (1..=100_000).contains(&api.max_concurrent_streams),
            "api.max_concurrent_streams",
            format!("{} is outside 1 to 100000", api.max_concurrent_streams),
        );
        check(
            (100..=3_600_000).contains(&api.request_timeout_millis),
            "api.request_timeout_millis",
            format!("{} is outside 100 to 3600000", api.request_timeout_millis),
        );
        check(
            api.shutdown_grace_millis <= 600_000,
            "api.shutdown_grace_millis",
            format!("{} is more than 600000", api.shutdown_grace_millis),
        );
        check(
            self.state.dir.is_absolute(),
            "state.dir",
            format!("must be an absolute path, not {:?}", self.state.dir),
        );
        check(
            valid_tcti(&self.tpm.tcti),
            "tpm.tcti",
            format!(
                "{:?} is not a TCTI (device:PATH, swtpm:host=H,port=P, mssim:..., tabrmd)",
                self.tpm.tcti
            ),
        );
        let telemetry = &self.telemetry;
        check(
            (10..=60_000).contains(&telemetry.min_interval_millis),
            "telemetry.min_interval_millis",
            format!("{} is outside 10 to 60000", telemetry.min_interval_millis),
        );
        check(
            (1..=1024).contains(&telemetry.queue_depth),
            "telemetry.queue_depth",
            format!("{} is outside 1 to 1024", telemetry.queue_depth),
        );
        check(
            (1..=100_000).contains(&telemetry.max_subscribers),
            "telemetry.max_subscribers",
            format!("{} is outside 1 to 100000", telemetry.max_subscribers),
        );
        let jobs = &self.jobs;
        check(
            jobs.runtime.is_absolute(),
            "jobs.runtime",
            format!("must be an absolute path, not {:?}", jobs.runtime),
        );
        check(
            jobs.dir.as_os_str().is_empty() || jobs.dir.is_absolute(),
            "jobs.dir",
            format!("must be empty or an absolute path, not {:?}", jobs.dir),
        );
        check(
            (4096..=1 << 40).contains(&jobs.log_max_bytes.0),
            "jobs.log_max_bytes",
            format!("{} bytes is outside 4 KiB to 1 TiB", jobs.log_max_bytes.0),
        );
        check(
            (1000..=jobs.max_time_limit_millis).contains(&jobs.default_time_limit_millis),
            "jobs.default_time_limit_millis",
            format!(
                "{} is outside 1000 to jobs.max_time_limit_millis ({})",
                jobs.default_time_limit_millis, jobs.max_time_limit_millis
            ),
        );
        check(
            !jobs.cgroup_parent.is_empty()
                && jobs
                    .cgroup_parent
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != ".."),
            "jobs.cgroup_parent",
            format!(
                "{:?} is not a relative cgroup path like \"fog-agent\"",
                jobs.cgroup_parent
            ),
        );
        check(
            (100..=60_000).contains(&jobs.telemetry_interval_millis),
            "jobs.telemetry_interval_millis",
            format!("{} is outside 100 to 60000", jobs.telemetry_interval_millis),
        );
        check(
            jobs.retention_millis == 0 || jobs.retention_millis >= 1000,
            "jobs.retention_millis",
            format!(
                "{} is below 1000 (0 keeps ended jobs forever)",
                jobs.retention_millis
            ),
        );
        let metrics = &self.metrics;
        check(
            (100..=3_600_000).contains(&metrics.sample_interval_millis),
            "metrics.sample_interval_millis",
            format!(
                "{} is outside 100 to 3600000",
                metrics.sample_interval_millis
            ),
        );
        check(
            metrics.tls_cert.as_os_str().is_empty() == metrics.tls_key.as_os_str().is_empty(),
            "metrics.tls_key",
            "set both metrics.tls_cert and metrics.tls_key for HTTPS, or neither".into(),
        );
        for gpu in &self.capacity.reserve_gpus {
            check(
                valid_pci_bus_id(gpu),
                "capacity.reserve_gpus",
                format!("{gpu:?} is not a PCI bus id like 0000:01:00.0"),
            );
        }
        out
    }
}

/// True for the TCTI forms tss-esapi accepts.
fn valid_tcti(tcti: &str) -> bool {
    let (name, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match name {
        "device" => conf.starts_with('/'),
        "swtpm" | "mssim" => true,
        "tabrmd" => true,
        _ => false,
    }
}

/// True for `dddd:bb:dd.f` in lowercase or uppercase hex.
fn valid_pci_bus_id(id: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = id.split([':', '.']).collect();
    matches!(parts.as_slice(), [d, b, s, f] if hex(d, 4) && hex(b, 2) && hex(s, 2) && hex(f, 1))
}

/// Turns toml's error into one that names the key path and the line.
fn syntax_error(text: &str, origin: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start).min(text.len());
    let (line, column) = line_column(text, offset);
    ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        key: key_path_at(text, offset),
        message: err.message().trim().to_owned(),
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The dotted key path of the key on the line holding `offset`: the nearest table header above
/// it, plus the key on that line (the header alone when the line is a header or has no key).
fn key_path_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |nl| line_start + nl);
    let line = text[line_start..line_end].trim();
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find_map(table_header)
        .unwrap_or_default();
    if let Some(own) = table_header(line) {
        return own;
    }
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"'))
        .filter(|key| !key.is_empty() && !key.starts_with('#'));
    match (header.is_empty(), key) {
        (_, None) if header.is_empty() => "(top level)".to_owned(),
        (_, None) => header,
        (true, Some(key)) => key.to_owned(),
        (false, Some(key)) => format!("{header}.{key}"),
    }
}

/// The name of a `[table]` header line.
fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?;
    let end = inner.find(']')?;
    Some(inner[..end].trim().trim_matches('[').trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<&'static str> {
        match Config::parse(text, "t.toml") {
            Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(|p| p.key).collect(),
            other => panic!("expected semantic errors, got {other:?}"),
        }
    }

    fn syntax_of(text: &str) -> (usize, String, String) {
        match Config::parse(text, "t.toml") {
            Err(ConfigError::Syntax {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn shipped_default_file_equals_embedded_defaults() {
        let parsed = Config::parse(DEFAULT_TOML, "packaging/agent.toml").unwrap();
        assert_eq!(parsed, Config::default());
        assert!(Config::default().problems().is_empty());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("", "t.toml").unwrap(), Config::default());
    }

    #[test]
    fn full_valid_file() {
        let text = r#"
[api]
listen = ["0.0.0.0:7443", "[::1]:7444"]
unix_socket = ""
tls_cert = "/x/server.pem"
tls_key = "/x/server.key"
client_ca = "/x/ca.pem"
max_message_bytes = "8 MiB"
max_concurrent_streams = 1000
[state]
dir = "/srv/fog"
[tpm]
tcti = "swtpm:host=127.0.0.1,port=2321"
[telemetry]
min_interval_millis = 100
queue_depth = 4
[capacity]
reserve_cpu_millicores = 2500
reserve_memory = "4 GiB"
reserve_disk = 0
reserve_gpus = ["0000:01:00.0"]
"#;
        let config = Config::parse(text, "t.toml").unwrap();
        assert_eq!(config.api.listen.len(), 2);
        assert_eq!(config.api.unix_socket(), None);
        assert_eq!(config.api.max_message_bytes, ByteSize(8 << 20));
        assert_eq!(config.capacity.reserve_memory, Amount::Bytes(4 << 30));
        assert_eq!(config.capacity.reserve_disk, Amount::Bytes(0));
        assert_eq!(config.telemetry.min_interval(), Duration::from_millis(100));
        assert_eq!(config.telemetry.max_subscribers, 4096, "default kept");
    }

    #[test]
    fn unknown_key_is_named_with_its_section_and_line() {
        let (line, key, message) = syntax_of("[api]\nlisten = []\nlisten_addr = 3\n");
        assert_eq!(line, 3);
        assert_eq!(key, "api.listen_addr");
        assert!(message.contains("unknown field `listen_addr`"), "{message}");
    }

    #[test]
    fn unknown_section_is_named() {
        let (line, key, _) = syntax_of("[state]\ndir = \"/x\"\n[gpu]\nx = 1\n");
        assert_eq!((line, key.as_str()), (3, "gpu"));
    }

    #[test]
    fn wrong_type_and_bad_values_name_the_key() {
        let (_, key, _) = syntax_of("[telemetry]\nmin_interval_millis = \"fast\"\n");
        assert_eq!(key, "telemetry.min_interval_millis");
        let (_, key, message) = syntax_of("[api]\nlisten = [\"localhost\"]\n");
        assert_eq!(key, "api.listen");
        assert!(message.contains("socket address"), "{message}");
        let (_, key, message) = syntax_of("[capacity]\nreserve_memory = \"12 parsecs\"\n");
        assert_eq!(key, "capacity.reserve_memory");
        assert!(message.contains("unknown size unit"), "{message}");
        let (_, key, _) = syntax_of("[capacity]\nreserve_memory = \"120%\"\n");
        assert_eq!(key, "capacity.reserve_memory");
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let (line, key, _) = syntax_of("[api]\ninsecure_loopback = tru\n");
        assert_eq!((line, key.as_str()), (2, "api.insecure_loopback"));
        let (line, _, _) = syntax_of("[api\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let keys = problems_of(
            r#"
[api]
listen = ["192.0.2.1:7443"]
insecure_loopback = true
max_concurrent_streams = 0
[state]
dir = "relative"
[tpm]
tcti = "/dev/tpm0"
[telemetry]
min_interval_millis = 1
queue_depth = 0
[capacity]
reserve_gpus = ["gpu0"]
[jobs]
runtime = "runc"
cgroup_parent = "../x"
telemetry_interval_millis = 5
retention_millis = 10
[metrics]
sample_interval_millis = 5
tls_cert = "/x/m.pem"
"#,
        );
        assert_eq!(
            keys,
            [
                "api.insecure_loopback",
                "api.max_concurrent_streams",
                "state.dir",
                "tpm.tcti",
                "telemetry.min_interval_millis",
                "telemetry.queue_depth",
                "jobs.runtime",
                "jobs.cgroup_parent",
                "jobs.telemetry_interval_millis",
                "jobs.retention_millis",
                "metrics.sample_interval_millis",
                "metrics.tls_key",
                "capacity.reserve_gpus",
            ]
        );
    }

    #[test]
    fn no_listener_and_missing_tls_paths() {
        assert_eq!(
            problems_of("[api]\nlisten = []\nunix_socket = \"\"\n"),
            ["api.listen"]
        );
        assert_eq!(
            problems_of("[api]\ntls_key = \"\"\nclient_ca = \"\"\n"),
            ["api.tls_key", "api.client_ca"]
        );
        // Plaintext loopback needs no TLS files.
        let ok =
            "[api]\ninsecure_loopback = true\ntls_cert = \"\"\ntls_key = \"\"\nclient_ca = \"\"\n";
        assert!(Config::parse(ok, "t.toml").is_ok());
    }

    #[test]
    fn sizes_and_amounts() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16777216 TiB").is_err(), "overflow");
        assert_eq!(parse_amount("10%"), Ok(Amount::Percent(10)));
        assert_eq!(parse_amount(" 100 %"), Ok(Amount::Percent(100)));
        assert!(parse_amount("101%").is_err());
        assert!(parse_amount("x%").is_err());
        assert_eq!(Amount::Percent(10).of(1000), 100);
        assert_eq!(Amount::Percent(100).of(u64::MAX), u64::MAX);
        assert_eq!(Amount::Bytes(5000).of(1000), 1000);
    }

    #[test]
    fn tcti_and_pci_forms() {
        assert!(valid_tcti("device:/dev/tpmrm0"));
        assert!(valid_tcti("swtpm:host=127.0.0.1,port=2321"));
        assert!(valid_tcti("tabrmd"));
        assert!(!valid_tcti("device:tpmrm0"));
        assert!(!valid_tcti(""));
        assert!(valid_pci_bus_id("0000:c1:00.0"));
        assert!(!valid_pci_bus_id("c1:00.0"));
        assert!(!valid_pci_bus_id("0000:c1:00.00"));
    }

    #[test]
    fn key_path_forms() {
        let text = "a = 1\n[api]\nlisten = 2\n[[x.y]]\n\"q\" = 3\n";
        assert_eq!(key_path_at(text, 0), "a");
        assert_eq!(
            key_path_at(text, text.find("listen").unwrap()),
            "api.listen"
        );
        assert_eq!(key_path_at(text, text.find("[api]").unwrap()), "api");
        assert_eq!(key_path_at(text, text.find("\"q\"").unwrap()), "x.y.q");
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
