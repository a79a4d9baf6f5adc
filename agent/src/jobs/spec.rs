//! The job spec (the domain form of `fog.agent.v1.JobSpec`) and its validation.
//!
//! [`validate`] checks every field against the host (the image must be imported, GPUs must
//! exist) and the `[jobs]` limits, and returns a [`ValidJob`]: the process to run (image
//! entrypoint/cmd/env merged with the spec's), the resolved image, the GPUs by PCI bus id and
//! the time limit. Each problem is a [`JobError::InvalidArgument`] whose field path comes first
//! (`resources.memory_bytes: must be positive, got -1`).
//!
//! The spec is bounded before anything else is looked at (`[jobs] max_spec_bytes`, see
//! [`spec_bytes`]), and no message quotes more than [`QUOTE_CHARS`] characters of a value the
//! caller sent ([`quote`]), so an error reply stays small whatever the request held.
//!
//! There is deliberately no field for host paths or mounts: a job sees its image (read-only),
//! its scratch dir and the runtime's minimal /proc, /dev, /sys. An image given as a host path is
//! refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobError;
use crate::config::JobsConfig;
use crate::fsroot::FsRoot;
use crate::net::Protocol;

/// Longest job id.
pub const MAX_JOB_ID_LEN: usize = 64;
/// Smallest CPU limit: the kernel's smallest CFS quota is 1 ms per 100 ms period.
pub const MIN_CPU_MILLICORES: i64 = 10;
/// Smallest memory limit runc can start a container under.
pub const MIN_MEMORY_BYTES: i64 = 4 << 20;
/// Largest number of env entries, args and labels each.
const MAX_LIST: usize = 4096;
/// The kernel's hard limit of `/proc/sys/kernel/pid_max` on 64-bit hosts (`PID_MAX_LIMIT`): the
/// largest pids limit when `pid_max` cannot be read.
pub const PID_MAX_LIMIT: i64 = 4 << 20;
/// Most characters of a caller's value an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// `value` quoted for an error message: at most [`QUOTE_CHARS`] characters, and then its full
/// length, so a reply never echoes a large request back.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}... ({} bytes)", &value[..end], value.len()),
    }
}

/// The size [`validate`] bounds by `[jobs] max_spec_bytes`: the bytes of all the spec's
/// strings together (what the agent keeps in memory and in its database per job, give or take
/// a fixed overhead).
pub fn spec_bytes(spec: &JobSpec) -> usize {
    let lists = [&spec.command, &spec.args, &spec.env, &spec.resources.gpus];
    let strings: usize = lists.iter().flat_map(|l| l.iter()).map(String::len).sum();
    let labels: usize = spec.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    spec.job_id.len() + spec.image.len() + spec.working_dir.len() + strings + labels
}

/// The kernel's largest pid (`/proc/sys/kernel/pid_max` below `fs`), which bounds
/// `resources.pids`; [`PID_MAX_LIMIT`] when it cannot be read.
pub fn pid_max(fs: &FsRoot) -> i64 {
    match fs
        .read_trimmed("/proc/sys/kernel/pid_max")
        .map(|text| text.parse::<i64>())
    {
        Ok(Ok(max)) if max > 0 => max,
        other => {
            tracing::debug!(result = ?other.map(|_| ()), "cannot read pid_max; using the kernel's hard limit");
            PID_MAX_LIMIT
        }
    }
}

/// What to run (see `fog.agent.v1.JobSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpec {
    /// The idempotency key.
    pub job_id: String,
    /// Image reference or manifest digest.
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's cmd when not empty.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Absolute working dir in the container; empty = the image's.
    pub working_dir: String,
    /// Limits, reserved against capacity.
    pub resources: Resources,
    /// 0 = the default.
    pub time_limit_millis: u64,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Container ports to publish on host ports.
    pub ports: Vec<PortSpec>,
}

/// A container port to publish (see `fog.agent.v1.PortMapping`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct PortSpec {
    /// The port inside the job (as on the wire, so 0 and 70000 are reported, not wrapped).
    pub container_port: u32,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// Resource limits (signed, as on the wire, so negative values are reported, not wrapped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Millicores.
    pub cpu_millicores: i64,
    /// Bytes.
    pub memory_bytes: i64,
    /// Processes and threads.
    pub pids: i64,
    /// GPUs by UUID or PCI bus id.
    pub gpus: Vec<String>,
    /// Scratch bytes.
    pub scratch_bytes: i64,
    /// Traffic into the job, bits per second; 0 = not limited.
    pub ingress_bits_per_second: i64,
    /// Traffic out of the job, bits per second; 0 = not limited.
    pub egress_bits_per_second: i64,
    /// `/dev/shm` bytes; 0 = [`default_shm_bytes`].
    pub shm_bytes: i64,
}

impl Resources {
    /// The size of the job's `/dev/shm`: `shm_bytes`, or [`default_shm_bytes`] when 0.
    pub fn shm_size(&self) -> u64 {
        let bytes = if self.shm_bytes == 0 {
            default_shm_bytes(self.memory_bytes)
        } else {
            self.shm_bytes
        };
        u64::try_from(bytes).unwrap_or(0)
    }
}

/// The `/dev/shm` size of a job that names none: half its memory (its pages are charged to the
/// memory limit anyway; PyTorch's DataLoader workers and NCCL need far more than Docker's 64 MiB).
pub fn default_shm_bytes(memory_bytes: i64) -> i64 {
    memory_bytes / 2
}

/// An image as jobs need it (what the image store records).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Reference name.
    pub reference: String,
    /// `sha256:...`.
    pub manifest_digest: String,
    /// The unpacked rootfs, absolute; shared read-only by every job of this image.
    pub rootfs: PathBuf,
    /// Image config: entrypoint.
    pub entrypoint: Vec<String>,
    /// Image config: cmd.
    pub cmd: Vec<String>,
    /// Image config: env.
    pub env: Vec<String>,
    /// Image config: working dir.
    pub working_dir: Option<String>,
    /// Image config: user (`uid[:gid]`; names are not resolved).
    pub user: Option<String>,
}

/// Where images come from (the image store in the daemon; a seam for tests).
pub trait ImageSource: Send + Sync {
    /// The image named `name` (reference or digest); `Ok(None)` when unknown.
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String>;

    /// Removes the image named `name` (see [`crate::image::ImageStore::remove`]), asking
    /// `check` with its manifest digest before the image itself goes; `Ok(None)` when unknown.
    fn remove(
        &self,
        name: &str,
        check: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<Option<crate::image::RemovedImage>, crate::image::ImageError> {
        let _ = (name, check);
        Err(crate::image::ImageError::InUse {
            image: name.to_owned(),
            reason: "this image source cannot remove images".to_owned(),
        })
    }
}

/// The image store is where the daemon's jobs get their images.
impl ImageSource for crate::image::ImageStore {
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        let record = self
            .get(name)
            .map_err(|err| crate::inventory::error_chain(&err))?;
        // A job starting from it: its last use, for garbage collection.
        if let Some(r) = &record {
            self.mark_used(&r.manifest_digest);
        }
        Ok(record.map(|r| ResolvedImage {
            reference: r.reference,
            manifest_digest: r.manifest_digest,
            rootfs: r.rootfs,
            entrypoint: r.config.entrypoint,
            cmd: r.config.cmd,
            env: r.config.env,
            working_dir: r.config.working_dir,
            user: r.config.user,
        }))
    }

    fn remove(
        &self,
        name: &str,
        check: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<Option<crate::image::RemovedImage>, crate::image::ImageError> {
        crate::image::ImageStore::remove(self, name, |record| check(&record.manifest_digest))
    }
}

/// An image source that knows no image (until the image store is wired in).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImages;

impl ImageSource for NoImages {
    fn resolve(&self, _name: &str) -> Result<Option<ResolvedImage>, String> {
        Ok(None)
    }
}

/// One GPU the host has, as jobs may name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuIdentity {
    /// PCI bus id (`0000:01:00.0`, lowercase).
    pub pci_bus_id: String,
    /// NVIDIA UUID (`GPU-...`), when NVML knows it.
    pub uuid: Option<String>,
}

/// A spec that passed validation, with everything resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidJob {
    /// The spec as given.
    pub spec: JobSpec,
    /// The image.
    pub image: ResolvedImage,
    /// argv.
    pub args: Vec<String>,
    /// The environment (image's, then the spec's; later entries override).
    pub env: Vec<String>,
    /// Working dir.
    pub cwd: String,
    /// uid, gid.
    pub user: (u32, u32),
    /// GPUs by PCI bus id, in the spec's order.
    pub gpus: Vec<String>,
    /// Wall-clock limit.
    pub time_limit: Duration,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> JobError {
    JobError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a job id: 1 to 64 of `[A-Za-z0-9_.-]`, first an ASCII letter or digit.
pub fn check_job_id(id: &str) -> Result<(), JobError> {
    if id.is_empty() || id.len() > MAX_JOB_ID_LEN {
        return Err(invalid(
            "job_id",
            format!("must be 1 to {MAX_JOB_ID_LEN} characters, got {}", id.len()),
        ));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(invalid(
            "job_id",
            format!(
                "{} may hold only A-Z a-z 0-9 _ . - and must start with a letter or digit",
                quote(id)
            ),
        ));
    }
    Ok(())
}

fn no_nul(field: &str, value: &str) -> Result<(), JobError> {
    if value.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// Checks one `NAME=value` entry.
fn check_env(field: &str, entry: &str) -> Result<(), JobError> {
    no_nul(field, entry)?;
    let Some((name, _)) = entry.split_once('=') else {
        return Err(invalid(
            field,
            format!("{} is not NAME=value", quote(entry)),
        ));
    };
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(invalid(
            field,
            format!(
                "{} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                quote(name)
            ),
        ));
    }
    Ok(())
}

/// An absolute container path without `..` components.
fn check_container_path(field: &str, path: &str) -> Result<(), JobError> {
    no_nul(field, path)?;
    if !path.starts_with('/') {
        return Err(invalid(field, format!("{} must be absolute", quote(path))));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(invalid(
            field,
            format!("{} must not contain ..", quote(path)),
        ));
    }
    Ok(())
}

/// `uid[:gid]` from an image's user; names (which need the image's /etc/passwd) map to root.
fn parse_user(user: Option<&str>) -> (u32, u32) {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return (0, 0);
    };
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = uid.parse().unwrap_or(0);
    let gid: u32 = gid.parse().unwrap_or(uid);
    (uid, gid)
}

/// Merges env lists: later entries replace earlier ones with the same name.
fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in base.iter().chain(over) {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        out.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != name);
        out.push(entry.clone());
    }
    out
}

/// Resolves one GPU name (UUID or PCI bus id, any case) to its PCI bus id.
pub fn resolve_gpu(name: &str, gpus: &[GpuIdentity]) -> Option<String> {
    gpus.iter()
        .find(|gpu| {
            gpu.pci_bus_id.eq_ignore_ascii_case(name)
                || gpu
                    .uuid
                    .as_deref()
                    .is_some_and(|uuid| uuid.eq_ignore_ascii_case(name))
        })
        .map(|gpu| gpu.pci_bus_id.clone())
}

/// Most ports a job may publish.
pub const MAX_PORTS: usize = 64;
/// Highest rate limit: 1 Tbit/s (the bandwidth plugin's tc rates are 64-bit, but no NIC is
/// faster).
pub const MAX_BITS_PER_SECOND: i64 = 1_000_000_000_000;
/// Lowest non-zero rate limit: tc's token bucket needs a burst of at least one MTU per tick.
pub const MIN_BITS_PER_SECOND: i64 = 8_000;

/// Published ports and rate limits: well-formed, and only where jobs have a network.
fn check_network(spec: &JobSpec, config: &JobsConfig) -> Result<(), JobError> {
    let r = &spec.resources;
    let without_network = |field: &str| {
        invalid(
            field,
            "this host runs jobs without a network ([jobs] network = \"none\")",
        )
    };
    for (field, rate) in [
        (
            "resources.ingress_bits_per_second",
            r.ingress_bits_per_second,
        ),
        ("resources.egress_bits_per_second", r.egress_bits_per_second),
    ] {
        if rate == 0 {
            continue;
        }
        if !(MIN_BITS_PER_SECOND..=MAX_BITS_PER_SECOND).contains(&rate) {
            return Err(invalid(
                field,
                format!("must be 0 (no limit) or {MIN_BITS_PER_SECOND} to {MAX_BITS_PER_SECOND}, got {rate}"),
            ));
        }
        if config.network.cni().is_none() {
            return Err(without_network(field));
        }
    }
    if spec.ports.is_empty() {
        return Ok(());
    }
    if config.network.cni().is_none() {
        return Err(without_network("ports"));
    }
    if spec.ports.len() > MAX_PORTS {
        return Err(invalid("ports", format!("more than {MAX_PORTS} ports")));
    }
    for (i, port) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(&port.container_port) {
            return Err(invalid(
                format!("ports[{i}].container_port"),
                format!("must be 1 to 65535, got {}", port.container_port),
            ));
        }
        if port.protocol == Protocol::Unspecified {
            return Err(invalid(
                format!("ports[{i}].protocol"),
                "required (TCP or UDP)",
            ));
        }
        if spec.ports[..i].contains(port) {
            return Err(invalid(
                format!("ports[{i}]"),
                format!(
                    "{}/{} is published twice",
                    port.container_port,
                    port.protocol.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Validates a spec against the host (its images, its GPUs, its `pid_max`) and the config.
pub fn validate(
    spec: &JobSpec,
    images: &dyn ImageSource,
    gpus: &[GpuIdentity],
    pid_max: i64,
    config: &JobsConfig,
) -> Result<ValidJob, JobError> {
    let size = spec_bytes(spec);
    if u64::try_from(size).unwrap_or(u64::MAX) > config.max_spec_bytes.0 {
        return Err(invalid(
            "spec",
            format!(
                "{size} bytes of strings is more than this host's limit of {} ([jobs] max_spec_bytes)",
                config.max_spec_bytes.0
            ),
        ));
    }
    check_job_id(&spec.job_id)?;

    if spec.image.is_empty() {
        return Err(invalid("image", "required"));
    }
    no_nul("image", &spec.image)?;
    if spec.image.starts_with('/') || spec.image.starts_with('.') {
        return Err(invalid(
            "image",
            format!(
                "{} is a host path; jobs run only from imported images (ImportImage)",
                quote(&spec.image)
            ),
        ));
    }
    let image = images
        .resolve(&spec.image)
        .map_err(JobError::Images)?
        .ok_or_else(|| {
            invalid(
                "image",
                format!("unknown image {} (import it first)", quote(&spec.image)),
            )
        })?;

    for (name, list) in [
        ("command", &spec.command),
        ("args", &spec.args),
        ("env", &spec.env),
    ] {
        if list.len() > MAX_LIST {
            return Err(invalid(name, format!("more than {MAX_LIST} entries")));
        }
    }
    for (i, arg) in spec.command.iter().enumerate() {
        no_nul(&format!("command[{i}]"), arg)?;
    }
    for (i, arg) in spec.args.iter().enumerate() {
        no_nul(&format!("args[{i}]"), arg)?;
    }
    for (i, entry) in spec.env.iter().enumerate() {
        check_env(&format!("env[{i}]"), entry)?;
    }
    if !spec.working_dir.is_empty() {
        check_container_path("working_dir", &spec.working_dir)?;
    }

    let r = &spec.resources;
    // (field, value, lowest allowed, the rule), checked in this order.
    let bounds = [
        (
            "resources.cpu_millicores",
            r.cpu_millicores,
            MIN_CPU_MILLICORES,
            format!("must be at least {MIN_CPU_MILLICORES}"),
        ),
        (
            "resources.memory_bytes",
            r.memory_bytes,
            1,
            "must be positive".to_owned(),
        ),
        (
            "resources.memory_bytes",
            r.memory_bytes,
            MIN_MEMORY_BYTES,
            format!("must be at least {MIN_MEMORY_BYTES} (4 MiB)"),
        ),
        ("resources.pids", r.pids, 1, "must be positive".to_owned()),
        (
            "resources.scratch_bytes",
            r.scratch_bytes,
            0,
            "must not be negative".to_owned(),
        ),
        (
            "resources.shm_bytes",
            r.shm_bytes,
            0,
            "must not be negative".to_owned(),
        ),
    ];
    for (field, value, lowest, rule) in bounds {
        if value < lowest {
            return Err(invalid(field, format!("{rule}, got {value}")));
        }
    }
    if r.shm_bytes > r.memory_bytes {
        return Err(invalid(
            "resources.shm_bytes",
            format!(
                "{} is more than resources.memory_bytes ({}): what /dev/shm holds is memory \
                 charged to the job",
                r.shm_bytes, r.memory_bytes
            ),
        ));
    }
    if r.pids > pid_max {
        return Err(invalid(
            "resources.pids",
            format!("{} is more than this host's pid_max of {pid_max}", r.pids),
        ));
    }
    let mut gpu_ids: Vec<String> = Vec::new();
    for (i, name) in r.gpus.iter().enumerate() {
        let field = format!("resources.gpus[{i}]");
        let id = resolve_gpu(name, gpus).ok_or_else(|| {
            invalid(
                &field,
                format!(
                    "unknown GPU {} (not a UUID or PCI bus id of this host)",
                    quote(name)
                ),
            )
        })?;
        if gpu_ids.contains(&id) {
            return Err(invalid(
                field,
                format!("GPU {} is named twice", quote(name)),
            ));
        }
        gpu_ids.push(id);
    }

    check_network(spec, config)?;

    let time_limit_millis = if spec.time_limit_millis == 0 {
        config.default_time_limit_millis
    } else {
        spec.time_limit_millis
    };
    if time_limit_millis > config.max_time_limit_millis {
        return Err(invalid(
            "time_limit_millis",
            format!(
                "{time_limit_millis} is more than this host's limit of {}",
                config.max_time_limit_millis
            ),
        ));
    }

    if spec.labels.len() > MAX_LIST {
        return Err(invalid("labels", format!("more than {MAX_LIST} labels")));
    }
    for (key, value) in &spec.labels {
        if key.is_empty() || key.len() > 63 {
            return Err(invalid(
                "labels",
                format!("key {} must be 1 to 63 characters", quote(key)),
            ));
        }
        no_nul("labels", key)?;
        no_nul(&format!("labels[{key}]"), value)?;
        if value.len() > 4096 {
            return Err(invalid(
                format!("labels[{key}]"),
                "value is longer than 4096 bytes",
            ));
        }
    }

    let entrypoint = if spec.command.is_empty() {
        &image.entrypoint
    } else {
        &spec.command
    };
    // As Docker does: a command given without args drops the image's cmd too.
    let cmd = if !spec.args.is_empty() {
        &spec.args
    } else if spec.command.is_empty() {
        &image.cmd
    } else {
        &spec.args
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(invalid(
            "command",
            "the image has no entrypoint or cmd: give command",
        ));
    }
    let cwd = if spec.working_dir.is_empty() {
        image
            .working_dir
            .clone()
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".to_owned())
    } else {
        spec.working_dir.clone()
    };
    // The root is read-only: HOME is the writable `/tmp` unless the image or the spec says.
    let mut base_env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        format!("HOME={}", super::bundle::TMP_MOUNT),
    ];
    base_env.extend(image.env.iter().cloned());
    let env = merge_env(&base_env, &spec.env);
    let user = parse_user(image.user.as_deref());
    Ok(ValidJob {
        spec: spec.clone(),
        image,
        args,
        env,
        cwd,
        user,
        gpus: gpu_ids,
        time_limit: Duration::from_millis(time_limit_millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneImage;
    impl ImageSource for OneImage {
        fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
            Ok((name == "busybox:latest").then(|| ResolvedImage {
                reference: name.into(),
                rootfs: "/images/busybox/rootfs".into(),
                cmd: vec!["/bin/sh".into()],
                env: vec!["PATH=/bin".into(), "A=1".into()],
                ..ResolvedImage::default()
            }))
        }
    }

    fn gpus() -> Vec<GpuIdentity> {
        vec![GpuIdentity {
            pci_bus_id: "0000:01:00.0".into(),
            uuid: Some("GPU-abc".into()),
        }]
    }

    fn good() -> JobSpec {
        JobSpec {
            job_id: "job-1".into(),
            image: "busybox:latest".into(),
            resources: Resources {
                cpu_millicores: 500,
                memory_bytes: 64 << 20,
                pids: 64,
                ..Resources::default()
            },
            ..JobSpec::default()
        }
    }

    fn field_of(spec: &JobSpec) -> String {
        match validate(
            spec,
            &OneImage,
            &gpus(),
            PID_MAX_LIMIT,
            &JobsConfig::default(),
        ) {
            Err(JobError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn good_spec_resolves_process_from_the_image() {
        let job = validate(
            &good(),
            &OneImage,
            &gpus(),
            PID_MAX_LIMIT,
            &JobsConfig::default(),
        )
        .unwrap();
        assert_eq!(job.args, ["/bin/sh"]);
        assert_eq!(job.cwd, "/");
        assert_eq!(
            job.env,
            ["HOME=/tmp", "PATH=/bin", "A=1"],
            "HOME is the writable /tmp"
        );
        assert_eq!(job.time_limit, Duration::from_millis(86_400_000));
        let mut spec = good();
        spec.command = vec!["sleep".into()];
        spec.env = vec!["A=2".into(), "HOME=/scratch".into()];
        spec.resources.gpus = vec!["gpu-ABC".into()];
        let job = validate(
            &spec,
            &OneImage,
            &gpus(),
            PID_MAX_LIMIT,
            &JobsConfig::default(),
        )
        .unwrap();
        assert_eq!(
            job.args,
            ["sleep"],
            "command without args drops the image cmd"
        );
        assert_eq!(
            job.env,
            ["PATH=/bin", "A=2", "HOME=/scratch"],
            "the spec's HOME wins"
        );
        assert_eq!(job.gpus, ["0000:01:00.0"]);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("job_id", Box::new(|s| s.job_id = String::new())),
            ("job_id", Box::new(|s| s.job_id = "a/b".into())),
            ("job_id", Box::new(|s| s.job_id = "-a".into())),
            ("job_id", Box::new(|s| s.job_id = "x".repeat(65))),
            ("image", Box::new(|s| s.image = "nope:1".into())),
            ("image", Box::new(|s| s.image = "/srv/rootfs".into())),
            ("image", Box::new(|s| s.image = String::new())),
            ("env[0]", Box::new(|s| s.env = vec!["NOEQUALS".into()])),
            (
                "env[1]",
                Box::new(|s| s.env = vec!["A=1".into(), "1A=2".into()]),
            ),
            ("working_dir", Box::new(|s| s.working_dir = "tmp".into())),
            (
                "working_dir",
                Box::new(|s| s.working_dir = "/a/../b".into()),
            ),
            (
                "resources.cpu_millicores",
                Box::new(|s| s.resources.cpu_millicores = 0),
            ),
            (
                "resources.memory_bytes",
                Box::new(|s| s.resources.memory_bytes = -1),
            ),
            (
                "resources.memory_bytes",
                Box::new(|s| s.resources.memory_bytes = 0),
            ),
            (
                "resources.memory_bytes",
                Box::new(|s| s.resources.memory_bytes = 1000),
            ),
            ("resources.pids", Box::new(|s| s.resources.pids = 0)),
            (
                "resources.scratch_bytes",
                Box::new(|s| s.resources.scratch_bytes = -5),
            ),
            (
                "resources.shm_bytes",
                Box::new(|s| s.resources.shm_bytes = -1),
            ),
            (
                "resources.shm_bytes",
                Box::new(|s| s.resources.shm_bytes = s.resources.memory_bytes + 1),
            ),
            (
                "resources.gpus[0]",
                Box::new(|s| s.resources.gpus = vec!["GPU-zzz".into()]),
            ),
            (
                "resources.gpus[1]",
                Box::new(|s| s.resources.gpus = vec!["GPU-abc".into(), "0000:01:00.0".into()]),
            ),
            (
                "time_limit_millis",
                Box::new(|s| s.time_limit_millis = u64::MAX),
            ),
            ("args[0]", Box::new(|s| s.args = vec!["a\0b".into()])),
            (
                "resources.egress_bits_per_second",
                Box::new(|s| s.resources.egress_bits_per_second = 10),
            ),
            (
                "ports[0].container_port",
                Box::new(|s| s.ports = vec![port(70_000, Protocol::Tcp)]),
            ),
            (
                "ports[0].protocol",
                Box::new(|s| s.ports = vec![port(80, Protocol::Unspecified)]),
            ),
            (
                "ports[1]",
                Box::new(|s| s.ports = vec![port(80, Protocol::Tcp); 2]),
            ),
            (
                "labels",
                Box::new(|s| {
                    s.labels.insert(String::new(), "x".into());
                }),
            ),
        ];
        for (want, change) in cases {
            let mut spec = good();
            change(&mut spec);
            assert_eq!(field_of(&spec), want, "{spec:?}");
        }
    }

    fn port(container_port: u32, protocol: Protocol) -> PortSpec {
        PortSpec {
            container_port,
            protocol,
        }
    }

    #[test]
    fn ports_and_rates_need_a_network() {
        let mut spec = good();
        spec.ports = vec![port(80, Protocol::Tcp), port(80, Protocol::Udp)];
        spec.resources.ingress_bits_per_second = 10_000_000;
        let with_network = JobsConfig::default();
        assert!(validate(&spec, &OneImage, &gpus(), PID_MAX_LIMIT, &with_network).is_ok());
        let without = JobsConfig {
            network: crate::config::JobNetwork::None,
            ..JobsConfig::default()
        };
        let err = validate(&spec, &OneImage, &gpus(), PID_MAX_LIMIT, &without).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("resources.ingress_bits_per_second: ")
                && err.to_string().contains("network = \"none\""),
            "{err}"
        );
        spec.resources.ingress_bits_per_second = 0;
        let err = validate(&spec, &OneImage, &gpus(), PID_MAX_LIMIT, &without).unwrap_err();
        assert!(err.to_string().starts_with("ports: "), "{err}");
    }

    #[test]
    fn users_and_env_merge() {
        assert_eq!(parse_user(Some("1000:100")), (1000, 100));
        assert_eq!(parse_user(Some("1000")), (1000, 1000));
        assert_eq!(parse_user(Some("nobody")), (0, 0));
        assert_eq!(parse_user(None), (0, 0));
        assert_eq!(
            merge_env(&["A=1".into(), "B=2".into()], &["A=3".into()]),
            ["B=2", "A=3"]
        );
    }
}
