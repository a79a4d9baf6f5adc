//! CDI (Container Device Interface) specs: the vendor-neutral description of what a container
//! needs to use a device (device nodes, driver library mounts, environment, hooks), written by
//! the vendors' tools (`nvidia-ctk cdi generate`, AMD's `amd-ctk cdi generate`) into `/etc/cdi`
//! and `/var/run/cdi`.
//!
//! This module owns three things, for the inventory (which GPUs have a CDI device) and the job
//! runner (the edits applied to a job's OCI runtime spec):
//! - [`Registry::load`]: the specs of the configured dirs (`[jobs] cdi_spec_dirs`, read below the
//!   agent's [`FsRoot`] so tests simulate hosts), later dirs overriding earlier ones for the same
//!   device, as CDI orders them. A spec file is trusted only when it and its dir are owned by
//!   root and not writable by group or others, and the file is a regular file (not a symlink) of
//!   at most [`MAX_SPEC_BYTES`]; any other file, and any file that does not parse or validate,
//!   is skipped with a problem naming it ([`Registry::problems`]), never a failure.
//! - [`find_gpu_device`] (in `lookup`): which CDI device is a given GPU, by the rule documented
//!   there (UUID name, then the `/dev/nvidia<minor>` node, then the PCI bus id as a name, then a
//!   `/dev/dri` node whose sysfs device is that bus id).
//! - [`apply`] (in `apply`): a device's container edits applied to an `oci_spec` runtime spec
//!   under this agent's policy (read-only mounts, no mounts over the bundle's own, char devices
//!   under `/dev` only, hooks only when allowed).
//!
//! Library choice: the `container-device-interface` crate parses a spec file
//! (`specs::config::Spec`) and validates it ([`spec::new_spec`](container_device_interface::spec::new_spec):
//! version, vendor/class/device names, the CDI JSON schema, every container edit), and names
//! devices (`get_qualified_name`). Its own apply path (`ContainerEdits::apply`) is not used: it
//! stats device nodes on the real `/` (not our root), grants `rwm` (mknod) by default, replaces
//! any existing mount at a spec's container path (a spec could mount over the job's scratch or
//! `/proc`), leaves bind mounts writable when the spec does not say `ro`, and adds every hook,
//! which runs as root on the host while the container is created. Its fields are mostly
//! crate-private, so the validated edits are read back through serde into [`Edits`]. Its
//! `jsonschema` dependency brings `reqwest` and `aws-lc-rs` into the build (schema references
//! are never fetched: the schema is built in).

mod apply;
mod lookup;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fsroot::FsRoot;

pub use apply::{apply, ApplyPolicy};
pub use lookup::{find_gpu_device, normalize_bus_id, nvidia_proc_info, GpuKey, NvidiaProcInfo};

/// The standard spec dirs, in CDI's order (the later one overrides the earlier).
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// The command that writes the NVIDIA spec where the agent reads it.
pub const GENERATE_COMMAND: &str = "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml";

/// Largest spec file read (nvidia-ctk writes a few tens of KiB for an 8-GPU host).
pub const MAX_SPEC_BYTES: u64 = 4 << 20;

/// Why CDI edits cannot be applied to a job.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// A device's edit breaks this agent's policy or does not fit the runtime spec.
    #[error("CDI device {device}: {reason}")]
    Refused {
        /// The qualified device name.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// The runtime spec could not be built.
    #[error("CDI device {device}: {source}")]
    Oci {
        /// The qualified device name.
        device: String,
        /// What oci-spec said.
        source: oci_spec::OciSpecError,
    },
}

/// Container edits of a device or of a whole spec file, as CDI defines them (`containerEdits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Edits {
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Device nodes to create in the container.
    pub device_nodes: Vec<DeviceNode>,
    /// Host paths to mount.
    pub mounts: Vec<Mount>,
    /// OCI hooks.
    pub hooks: Vec<Hook>,
    /// Supplementary groups of the container's process.
    pub additional_gids: Vec<u32>,
    /// Host network interfaces to move into the container (refused by [`apply`]).
    pub net_devices: Vec<serde_json::Value>,
    /// Intel RDT settings (refused by [`apply`]).
    pub intel_rdt: Option<serde_json::Value>,
}

/// A device node of [`Edits`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DeviceNode {
    /// Path in the container.
    pub path: String,
    /// Path on the host, when not the same.
    pub host_path: Option<String>,
    /// `c`, `b`, `u` or `p`; read from the host node when absent.
    #[serde(rename = "type")]
    pub typ: Option<String>,
    /// Major number; read from the host node when absent.
    pub major: Option<i64>,
    /// Minor number.
    pub minor: Option<i64>,
    /// Mode of the node in the container.
    pub file_mode: Option<u32>,
    /// Device cgroup access (`rwm` letters, or `none`).
    pub permissions: Option<String>,
    /// Owner in the container.
    pub uid: Option<u32>,
    /// Group in the container.
    pub gid: Option<u32>,
}

impl DeviceNode {
    /// The host path the node's numbers come from.
    pub fn host(&self) -> &str {
        self.host_path.as_deref().unwrap_or(&self.path)
    }
}

/// A mount of [`Edits`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Mount {
    /// Source on the host.
    pub host_path: String,
    /// Destination in the container.
    pub container_path: String,
    /// Mount type (`bind` when absent).
    #[serde(rename = "type")]
    pub typ: Option<String>,
    /// Mount options.
    pub options: Vec<String>,
}

/// An OCI hook of [`Edits`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Hook {
    /// `prestart`, `createRuntime`, `createContainer`, `startContainer`, `poststart` or
    /// `poststop`.
    pub hook_name: String,
    /// The host binary.
    pub path: String,
    /// Its argv.
    pub args: Option<Vec<String>>,
    /// Its environment.
    pub env: Option<Vec<String>>,
    /// Seconds.
    pub timeout: Option<i64>,
}

/// One device of a trusted, valid spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The qualified name, `vendor.com/class=name`.
    pub qualified_name: String,
    /// The spec's kind, `vendor.com/class`.
    pub kind: String,
    /// The device's own name (`0`, `GPU-<uuid>`, `all`...).
    pub name: String,
    /// The device's edits.
    pub edits: Edits,
    /// The spec file's own (spec-wide) edits, applied once with any of its devices.
    pub spec_edits: Edits,
    /// The spec file, as the agent's root names it (`/etc/cdi/nvidia.yaml`).
    pub spec_path: String,
}

impl Device {
    /// Hooks of the device and of its spec.
    pub fn hook_count(&self) -> usize {
        self.edits.hooks.len() + self.spec_edits.hooks.len()
    }
}

/// The devices of every trusted, valid spec of the configured dirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// By qualified name.
    pub devices: BTreeMap<String, Device>,
    /// Why files were skipped (`<path>: <why>`).
    pub problems: Vec<String>,
}

impl Registry {
    /// Reads the spec files (`*.json`, `*.yaml`, in name order) of `dirs` below `fs`; a
    /// device of a later dir replaces one of the same name from an earlier dir. Missing dirs
    /// are normal (no spec).
    pub fn load(fs: &FsRoot, dirs: &[PathBuf]) -> Self {
        let mut registry = Self::default();
        for (priority, dir) in dirs.iter().enumerate() {
            let dir = dir.to_string_lossy();
            let names = match fs.list_dir(&dir) {
                Ok(names) => names,
                Err(err) if err.is_not_found() => continue,
                Err(err) => {
                    registry
                        .problems
                        .push(format!("{dir}: cannot list: {}", err.source));
                    continue;
                }
            };
            if let Err(why) = check_owner(&fs.path(&dir), true) {
                registry.problems.push(format!("{dir}: not trusted: {why}"));
                continue;
            }
            for name in names {
                if !(name.ends_with(".yaml") || name.ends_with(".json")) {
                    continue;
                }
                let path = format!("{}/{name}", dir.trim_end_matches('/'));
                match read_spec(fs, &path, priority) {
                    Ok(devices) => {
                        for device in devices {
                            registry
                                .devices
                                .insert(device.qualified_name.clone(), device);
                        }
                    }
                    Err(why) => registry.problems.push(format!("{path}: {why}")),
                }
            }
        }
        registry
    }
}

/// Owned by root and not writable by group or others.
fn check_owner(path: &Path, dir: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    check_meta(&meta, dir)
}

fn check_meta(meta: &std::fs::Metadata, dir: bool) -> Result<(), String> {
    if dir != meta.is_dir() || (!dir && !meta.is_file()) {
        return Err(if dir {
            "not a directory".to_owned()
        } else {
            "not a regular file".to_owned()
        });
    }
    if meta.uid() != 0 {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} is writable by group or others",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Reads, checks and validates one spec file; its devices.
fn read_spec(fs: &FsRoot, path: &str, priority: usize) -> Result<Vec<Device>, String> {
    let real = fs.path(path);
    // No symlink is followed, and the checks are made on the open file (no swap in between).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&real)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    check_meta(&meta, false).map_err(|why| format!("not trusted: {why}"))?;
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    // The crate is not expected to panic on any input; a spec must never take the agent down
    // if it does.
    std::panic::catch_unwind(|| parse_spec(&bytes, &real, priority, path))
        .unwrap_or_else(|_| Err("the CDI parser panicked".to_owned()))
}

fn parse_spec(
    bytes: &[u8],
    real: &Path,
    priority: usize,
    path: &str,
) -> Result<Vec<Device>, String> {
    use container_device_interface as cdi;
    let raw: cdi::specs::config::Spec =
        serde_yaml::from_slice(bytes).map_err(|e| format!("not a CDI spec: {e}"))?;
    let spec = cdi::spec::new_spec(
        &raw,
        &real.to_path_buf(),
        i32::try_from(priority).unwrap_or(i32::MAX),
    )
    .map_err(|e| format!("invalid CDI spec: {e:#}"))?;
    let kind = format!("{}/{}", spec.get_vendor(), spec.get_class());
    let spec_edits = match &spec.cdi_spec.container_edits {
        Some(edits) => to_edits(edits)?,
        None => Edits::default(),
    };
    let mut devices = Vec::new();
    for (name, device) in &spec.devices {
        devices.push(Device {
            qualified_name: device.get_qualified_name(),
            kind: kind.clone(),
            name: name.clone(),
            edits: to_edits(&device.edits().container_edits)?,
            spec_edits: spec_edits.clone(),
            spec_path: path.to_owned(),
        });
    }
    Ok(devices)
}

/// The crate's validated edits, read back through serde (its fields are crate-private).
fn to_edits(
    edits: &container_device_interface::specs::config::ContainerEdits,
) -> Result<Edits, String> {
    serde_json::to_value(edits)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("cannot read its container edits: {e}"))
}

#[cfg(test)]
pub(crate) mod tests;
