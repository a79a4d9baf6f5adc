//! A CDI device's container edits applied to a job's OCI runtime spec, under this agent's
//! policy (it runs strangers' jobs):
//! - environment: added, replacing the job's value of the same name (the device needs it);
//! - device nodes: character devices only, at a path under `/dev/`; numbers from the spec, or
//!   else read from the host node below the agent's root; the device cgroup allows them `rw`
//!   (never `m`: no mknod), or not at all for `permissions: none`; mode 0666 unless the spec
//!   says otherwise; a node already in the spec at the same path is replaced;
//! - mounts: bind mounts only, of host paths below the agent's root that exist, always with
//!   `ro`, `nosuid` and `nodev` (any `rw` dropped) and `rbind` unless `bind` is given; the
//!   destination must be an absolute path without `..` that neither is, nor lies under, nor
//!   contains a mount the bundle already has (`/proc`, `/dev`, `/sys`, the scratch dir,
//!   `/etc/hosts`...), so a spec can never hide or replace the job's own mounts; the same mount
//!   twice (two GPUs of one spec) is added once;
//! - hooks: only with [`ApplyPolicy::hooks`] (`[jobs] cdi_hooks`): they run as root on the host
//!   while the container is created, against a rootfs the job's image controls and every job of
//!   that image shares (nvidia-ctk's `update-ldcache` and `create-symlinks` write into it);
//!   without it they are left out (the job's notes say so);
//! - supplementary groups: added (non-zero ones);
//! - network devices and Intel RDT: refused (no GPU needs them; they reach beyond the job).

use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    HookBuilder, Hooks, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    MountBuilder, Spec,
};

use super::{CdiError, DeviceNode, Edits, Mount};
use crate::fsroot::FsRoot;

/// What [`apply`] may do beyond the always-safe edits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyPolicy {
    /// Add the spec's OCI hooks (`[jobs] cdi_hooks`).
    pub hooks: bool,
}

/// Applies `edits` (of the device named `device`) to `spec`; host paths are read below `fs`.
pub fn apply(
    spec: &mut Spec,
    fs: &FsRoot,
    device: &str,
    edits: &Edits,
    policy: ApplyPolicy,
) -> Result<(), CdiError> {
    let refused = |reason: String| CdiError::Refused {
        device: device.to_owned(),
        reason,
    };
    let oci = |source| CdiError::Oci {
        device: device.to_owned(),
        source,
    };
    if !edits.net_devices.is_empty() {
        return Err(refused("network devices are not given to jobs".to_owned()));
    }
    if edits.intel_rdt.is_some() {
        return Err(refused(
            "Intel RDT settings are not applied to jobs".to_owned(),
        ));
    }

    let mut process = spec.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for entry in &edits.env {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != name);
        env.push(entry.clone());
    }
    process.set_env(Some(env));
    let mut user = process.user().clone();
    let mut gids = user.additional_gids().clone().unwrap_or_default();
    for gid in &edits.additional_gids {
        if *gid != 0 && !gids.contains(gid) {
            gids.push(*gid);
        }
    }
    if !gids.is_empty() {
        user.set_additional_gids(Some(gids));
    }
    process.set_user(user);
    spec.set_process(Some(process));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for node in &edits.device_nodes {
        let (major, minor) = node_numbers(fs, node).map_err(refused)?;
        devices.retain(|d| d.path() != Path::new(&node.path));
        devices.push(
            LinuxDeviceBuilder::default()
                .path(PathBuf::from(&node.path))
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(minor)
                .file_mode(node.file_mode.unwrap_or(0o666))
                .uid(node.uid.unwrap_or(0))
                .gid(node.gid.unwrap_or(0))
                .build()
                .map_err(oci)?,
        );
        let access: String = match node.permissions.as_deref() {
            Some("none") => continue,
            None | Some("") => "rw".to_owned(),
            Some(letters) => letters.chars().filter(|c| matches!(c, 'r' | 'w')).collect(),
        };
        if access.is_empty() {
            continue;
        }
        let rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .minor(minor)
            .access(access)
            .build()
            .map_err(oci)?;
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    linux.set_devices(Some(devices));
    spec.set_linux(Some(linux));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for mount in &edits.mounts {
        let source = mount_source(fs, mount).map_err(refused)?;
        let dest = clean_container_path(&mount.container_path).map_err(refused)?;
        if let Some(existing) = mounts.iter().find(|m| overlaps(m.destination(), &dest)) {
            if existing.destination() == &dest && existing.source().as_deref() == Some(&source) {
                continue;
            }
            return Err(refused(format!(
                "mount at {} would overlap the job's mount at {}",
                dest.display(),
                existing.destination().display()
            )));
        }
        let mut options: Vec<String> = mount
            .options
            .iter()
            .filter(|o| o.as_str() != "rw")
            .cloned()
            .collect();
        if !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.push("rbind".to_owned());
        }
        for needed in ["ro", "nosuid", "nodev"] {
            if !options.iter().any(|o| o == needed) {
                options.push(needed.to_owned());
            }
        }
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source)
                .options(options)
                .build()
                .map_err(oci)?,
        );
    }
    spec.set_mounts(Some(mounts));

    if policy.hooks && !edits.hooks.is_empty() {
        let mut hooks = spec.hooks().clone().unwrap_or_default();
        for hook in &edits.hooks {
            let oci_hook = HookBuilder::default()
                .path(PathBuf::from(&hook.path))
                .args(hook.args.clone().unwrap_or_default())
                .env(hook.env.clone().unwrap_or_default())
                .build()
                .map_err(oci)?;
            let mut oci_hook = oci_hook;
            oci_hook.set_timeout(hook.timeout);
            add_hook(&mut hooks, &hook.hook_name, oci_hook).map_err(refused)?;
        }
        spec.set_hooks(Some(hooks));
    }
    Ok(())
}

fn add_hook(hooks: &mut Hooks, name: &str, hook: oci_spec::runtime::Hook) -> Result<(), String> {
    let push = |list: &Option<Vec<oci_spec::runtime::Hook>>| {
        let mut list = list.clone().unwrap_or_default();
        list.push(hook.clone());
        Some(list)
    };
    #[allow(deprecated)]
    match name {
        "prestart" => hooks.set_prestart(push(hooks.prestart())),
        "createRuntime" => hooks.set_create_runtime(push(hooks.create_runtime())),
        "createContainer" => hooks.set_create_container(push(hooks.create_container())),
        "startContainer" => hooks.set_start_container(push(hooks.start_container())),
        "poststart" => hooks.set_poststart(push(hooks.poststart())),
        "poststop" => hooks.set_poststop(push(hooks.poststop())),
        other => return Err(format!("unknown hook {other:?}")),
    };
    Ok(())
}

/// A device node's major and minor: a character device under `/dev/`.
fn node_numbers(fs: &FsRoot, node: &DeviceNode) -> Result<(i64, i64), String> {
    let path = clean_container_path(&node.path)?;
    if !path.starts_with("/dev") || path == Path::new("/dev") {
        return Err(format!("device node {} is not under /dev", node.path));
    }
    match node.typ.as_deref() {
        None | Some("") | Some("c") | Some("u") => {}
        Some(other) => {
            return Err(format!(
                "device node {} of type {other:?}: only character devices are given to jobs",
                node.path
            ))
        }
    }
    if let (Some(major), Some(minor)) = (node.major, node.minor) {
        return Ok((major, minor));
    }
    let host = node.host();
    let meta = std::fs::metadata(fs.path(host))
        .map_err(|e| format!("device node {}: cannot stat {host}: {e}", node.path))?;
    if !meta.file_type().is_char_device() {
        return Err(format!(
            "device node {}: {host} is not a character device",
            node.path
        ));
    }
    let rdev = meta.rdev();
    Ok((i64::from(libc::major(rdev)), i64::from(libc::minor(rdev))))
}

/// The host path of a bind mount below `fs`, which must exist.
fn mount_source(fs: &FsRoot, mount: &Mount) -> Result<PathBuf, String> {
    match mount.typ.as_deref() {
        None | Some("") | Some("bind") | Some("rbind") => {}
        Some(other) => {
            return Err(format!(
                "mount at {} of type {other:?}: only bind mounts are given to jobs",
                mount.container_path
            ))
        }
    }
    if !mount.host_path.starts_with('/') {
        return Err(format!(
            "mount source {:?} is not absolute",
            mount.host_path
        ));
    }
    let source = fs.path(&mount.host_path);
    if std::fs::symlink_metadata(&source).is_err() {
        return Err(format!("mount source {} does not exist", mount.host_path));
    }
    if source.to_str().is_none() {
        return Err(format!("mount source {} is not UTF-8", source.display()));
    }
    Ok(source)
}

/// An absolute container path without `..`, `.` and repeated slashes removed.
fn clean_container_path(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("container path {path:?} is not absolute"));
    }
    let mut clean = PathBuf::from("/");
    for part in Path::new(path).components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => clean.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("container path {path:?} contains .."))
            }
        }
    }
    if clean == Path::new("/") {
        return Err("container path / is the job's root".to_owned());
    }
    Ok(clean)
}

/// One path is the other or lies under it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}
