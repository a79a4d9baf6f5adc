//! The OCI bundle of a job: `config.json` (runtime spec, built with the `oci-spec` crate) in the
//! job dir, pointing at the image's rootfs.
//!
//! What the spec says, and why:
//! - root: the image's unpacked rootfs, shared by every job of that image, mounted read-only.
//!   (runc creates missing mount points such as `/scratch` in it once; they stay empty.)
//! - mounts: only the minimal ones: `/proc`, `/dev` (tmpfs), `/dev/pts`, `/dev/shm` (tmpfs of
//!   `shm_bytes`, by default half the memory limit), `/dev/mqueue`, `/sys` read-only, [`TMP_MOUNT`]
//!   (a writable tmpfs of at most the memory limit; `HOME` unless the image or spec sets it),
//!   and the job's own scratch dir read-write at [`SCRATCH_MOUNT`]. No writable host path other
//!   than the scratch dir is mounted; a job without scratch (`scratch_bytes = 0`) gets an empty
//!   read-only tmpfs there, so it has no writable host path at all. What the tmpfs mounts hold
//!   is memory charged to the job's cgroup (the kernel charges a tmpfs page to the writer's
//!   cgroup), so a job filling `/tmp` meets its memory limit and the OOM killer, not the host's.
//! - namespaces: pid, ipc, uts, mount, and network: the job's own namespace attached by
//!   [`crate::net`] (joined by path, as containerd does), with its `resolv.conf` and `hosts`
//!   bind-mounted read-only from the job dir; with `[jobs] network = "none"` a fresh
//!   namespace with loopback only.
//! - resources: CPU quota/period from millicores (100 ms period), memory limit with memory+swap
//!   equal to it (no swap), pids limit, and a device cgroup that denies everything except the
//!   runtime's default safe nodes plus the job's GPUs' `/dev/nvidia*` nodes (GPUs with a CDI
//!   device get its edits instead, applied after this spec is built: see [`super::gpus`]).
//! - process: no capabilities at all (bounding, effective, permitted, inheritable, ambient
//!   empty), `noNewPrivileges`, `RLIMIT_NOFILE` 1024/4096; not privileged (the OCI spec has no
//!   such switch: privilege would be capabilities and device access, both denied).
//! - seccomp: the allowlist of [`super::seccomp`] (Docker's default for a container without
//!   capabilities, io_uring refused).
//! - `linux.cgroupsPath = "/<cgroup_parent>/<job id>"` so telemetry finds the cgroup.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::spec::ValidJob;
use super::JobError;
use crate::fsroot::FsRoot;

/// Where the job's scratch dir is mounted in the container.
pub const SCRATCH_MOUNT: &str = "/scratch";
/// The job's writable tmpfs (and its default `HOME`).
pub const TMP_MOUNT: &str = "/tmp";
/// CFS period in microseconds.
pub const CPU_PERIOD_MICROS: u64 = 100_000;
/// The smallest tmpfs size given (a `size=0` tmpfs would be unlimited).
const PAGE: u64 = 4096;
/// Major number of NVIDIA's character devices.
const NVIDIA_MAJOR: i64 = 195;

/// A device node given to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path in the container (same as on the host).
    pub path: PathBuf,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
}

/// The CFS quota (microseconds per [`CPU_PERIOD_MICROS`]) for a CPU limit in millicores.
pub fn cpu_quota_micros(millicores: i64) -> i64 {
    millicores.saturating_mul(CPU_PERIOD_MICROS as i64) / 1000
}

/// The `/dev/nvidia*` nodes the given GPUs need: each card's `/dev/nvidia<minor>` (minor from
/// `/proc/driver/nvidia/gpus/<bus id>/information`), plus `/dev/nvidiactl`, `/dev/nvidia-uvm`
/// and `/dev/nvidia-uvm-tools` when the host has them (their numbers read from `/dev`).
pub fn gpu_device_nodes(fs: &FsRoot, pci_bus_ids: &[String]) -> Result<Vec<DeviceNode>, JobError> {
    use std::os::unix::fs::MetadataExt;
    if pci_bus_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut nodes = Vec::new();
    for id in pci_bus_ids {
        let info_path = format!("/proc/driver/nvidia/gpus/{id}/information");
        let info = fs.read_string(&info_path).map_err(|err| {
            JobError::Gpu(format!(
                "GPU {id}: cannot read {info_path} (is the NVIDIA driver loaded?): {}",
                err.source
            ))
        })?;
        let minor = info
            .lines()
            .find_map(|line| line.strip_prefix("Device Minor:"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| JobError::Gpu(format!("GPU {id}: no Device Minor in {info_path}")))?;
        nodes.push(DeviceNode {
            path: PathBuf::from(format!("/dev/nvidia{minor}")),
            major: NVIDIA_MAJOR,
            minor,
        });
    }
    for name in ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"] {
        if let Ok(meta) = std::fs::metadata(fs.path(name)) {
            let rdev = meta.rdev();
            nodes.push(DeviceNode {
                path: PathBuf::from(name),
                major: libc::major(rdev) as i64,
                minor: libc::minor(rdev) as i64,
            });
        }
    }
    Ok(nodes)
}

fn build_err(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> JobError + '_ {
    move |err| JobError::Bundle(format!("{what}: {err}"))
}

/// A host path as the runtime spec holds it.
fn utf8(path: &Path) -> Result<String, JobError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| JobError::Bundle(format!("{} is not UTF-8", path.display())))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, JobError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(build_err("mount"))
}

/// A job's network as its bundle names it: the namespace to join, and the files mounted
/// read-only over `/etc/resolv.conf` and `/etc/hosts`.
#[derive(Debug, Clone, Copy)]
pub struct BundleNetwork<'a> {
    /// The network namespace file ([`crate::net::netns`]).
    pub netns: &'a Path,
    /// The job's `resolv.conf`.
    pub resolv_conf: &'a Path,
    /// The job's `hosts`.
    pub hosts: &'a Path,
}

/// The runtime spec of a job; without `network`, a new namespace with loopback only.
pub fn runtime_spec(
    job: &ValidJob,
    scratch_dir: Option<&Path>,
    cgroups_path: &str,
    gpu_nodes: &[DeviceNode],
    network: Option<BundleNetwork<'_>>,
) -> Result<Spec, JobError> {
    let r = &job.spec.resources;
    let caps: Capabilities = HashSet::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .inheritable(caps.clone())
        .permitted(caps.clone())
        .ambient(caps)
        .build()
        .map_err(build_err("capabilities"))?;
    let rlimits = vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(1024u64)
        .hard(4096u64)
        .build()
        .map_err(build_err("rlimit"))?];
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(job.user.0)
                .gid(job.user.1)
                .build()
                .map_err(build_err("user"))?,
        )
        .args(job.args.clone())
        .env(job.env.clone())
        .cwd(job.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()
        .map_err(build_err("process"))?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                &format!("size={}", r.shm_size().max(PAGE)),
            ],
        )?,
        mount(
            TMP_MOUNT,
            "tmpfs",
            "tmpfs",
            &[
                "nosuid",
                "nodev",
                "mode=1777",
                &format!(
                    "size={}",
                    u64::try_from(r.memory_bytes).unwrap_or(0).max(PAGE)
                ),
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ];
    match scratch_dir {
        Some(scratch_dir) => {
            mounts.push(mount(
                SCRATCH_MOUNT,
                "bind",
                &utf8(scratch_dir)?,
                &["rbind", "rw", "nosuid", "nodev"],
            )?);
        }
        None => mounts.push(mount(
            SCRATCH_MOUNT,
            "tmpfs",
            "tmpfs",
            &["ro", "nosuid", "nodev", "noexec", "mode=0555", "size=4k"],
        )?),
    }

    if let Some(network) = network {
        for (dest, file) in [
            ("/etc/resolv.conf", network.resolv_conf),
            ("/etc/hosts", network.hosts),
        ] {
            mounts.push(mount(
                dest,
                "bind",
                &utf8(file)?,
                &["rbind", "ro", "nosuid", "nodev", "noexec"],
            )?);
        }
    }

    let mut device_rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .typ(LinuxDeviceType::A)
        .access("rwm")
        .build()
        .map_err(build_err("device rule"))?];
    let mut devices = Vec::new();
    for node in gpu_nodes {
        device_rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(node.major)
                .minor(node.minor)
                .access("rw")
                .build()
                .map_err(build_err("device rule"))?,
        );
        devices.push(
            LinuxDeviceBuilder::default()
                .path(node.path.clone())
                .typ(LinuxDeviceType::C)
                .major(node.major)
                .minor(node.minor)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(build_err("device"))?,
        );
    }
    let memory_limit = r.memory_bytes;
    let resources = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .quota(cpu_quota_micros(r.cpu_millicores))
                .period(CPU_PERIOD_MICROS)
                .build()
                .map_err(build_err("cpu"))?,
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_limit)
                .swap(memory_limit)
                .build()
                .map_err(build_err("memory"))?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(r.pids)
                .build()
                .map_err(build_err("pids"))?,
        )
        .devices(device_rules)
        .build()
        .map_err(build_err("resources"))?;
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| {
        let namespace = LinuxNamespaceBuilder::default().typ(typ);
        let namespace = match (typ, network) {
            (LinuxNamespaceType::Network, Some(network)) => {
                namespace.path(network.netns.to_owned())
            }
            _ => namespace,
        };
        namespace.build().map_err(build_err("namespace"))
    })
    .collect::<Result<Vec<_>, _>>()?;
    let linux = LinuxBuilder::default()
        .resources(resources)
        .cgroups_path(PathBuf::from(cgroups_path))
        .namespaces(namespaces)
        .devices(devices)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .seccomp(super::seccomp::job_profile()?)
        .build()
        .map_err(build_err("linux"))?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(job.image.rootfs.clone())
                .readonly(true)
                .build()
                .map_err(build_err("root"))?,
        )
        .hostname(job.spec.job_id.clone())
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(build_err("spec"))
}

/// Writes `config.json` into `bundle_dir` (created if missing).
pub fn write_bundle(bundle_dir: &Path, spec: &Spec) -> Result<(), JobError> {
    std::fs::create_dir_all(bundle_dir).map_err(|source| JobError::Io {
        path: bundle_dir.to_owned(),
        source,
    })?;
    let path = bundle_dir.join("config.json");
    spec.save(&path)
        .map_err(|err| JobError::Bundle(format!("cannot write {}: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::spec::{JobSpec, ResolvedImage, Resources};

    fn job() -> ValidJob {
        ValidJob {
            spec: JobSpec {
                job_id: "j1".into(),
                resources: Resources {
                    cpu_millicores: 500,
                    memory_bytes: 64 << 20,
                    pids: 32,
                    ..Resources::default()
                },
                ..JobSpec::default()
            },
            image: ResolvedImage {
                rootfs: "/img/rootfs".into(),
                ..ResolvedImage::default()
            },
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/".into(),
            user: (0, 0),
            gpus: vec![],
            time_limit: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn spec_carries_the_limits_and_isolation() {
        let nodes = [DeviceNode {
            path: "/dev/nvidia0".into(),
            major: 195,
            minor: 0,
        }];
        let spec = runtime_spec(
            &job(),
            Some(Path::new("/jobs/j1/scratch")),
            "/fog-agent/j1",
            &nodes,
            None,
        )
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let linux = &v["linux"];
        assert_eq!(linux["cgroupsPath"], "/fog-agent/j1");
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["cpu"]["period"], 100_000);
        assert_eq!(linux["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 64 << 20);
        assert_eq!(linux["resources"]["pids"]["limit"], 32);
        let rules = linux["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0]["allow"], false);
        assert_eq!(rules[0]["access"], "rwm");
        assert!(rules[0].get("major").is_none(), "deny-all first");
        assert_eq!(
            (rules[1]["major"].clone(), rules[1]["allow"].clone()),
            (195.into(), true.into())
        );
        assert_eq!(linux["devices"][0]["path"], "/dev/nvidia0");
        let ns: Vec<&str> = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && ns.contains(&"pid") && ns.contains(&"mount"));
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["root"]["path"], "/img/rootfs");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert_eq!(
                v["process"]["capabilities"][set],
                serde_json::json!([]),
                "{set}"
            );
        }
        let mounts = v["mounts"].as_array().unwrap();
        let binds: Vec<&serde_json::Value> =
            mounts.iter().filter(|m| m["type"] == "bind").collect();
        assert_eq!(binds.len(), 1, "only the scratch dir comes from the host");
        assert_eq!(binds[0]["source"], "/jobs/j1/scratch");
        assert_eq!(binds[0]["destination"], SCRATCH_MOUNT);
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&"ro".into()));
    }

    #[test]
    fn a_network_is_joined_by_path_with_its_files_read_only() {
        let network = BundleNetwork {
            netns: Path::new("/run/fog-agent/net/netns/j1"),
            resolv_conf: Path::new("/jobs/j1/resolv.conf"),
            hosts: Path::new("/jobs/j1/hosts"),
        };
        let spec = runtime_spec(&job(), None, "/fog-agent/j1", &[], Some(network)).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let namespaces = v["linux"]["namespaces"].as_array().unwrap();
        let net = namespaces.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/fog-agent/net/netns/j1");
        let mounts = v["mounts"].as_array().unwrap();
        for (dest, source) in [
            ("/etc/resolv.conf", "/jobs/j1/resolv.conf"),
            ("/etc/hosts", "/jobs/j1/hosts"),
        ] {
            let m = mounts.iter().find(|m| m["destination"] == dest).unwrap();
            assert_eq!(m["source"], source);
            assert!(
                m["options"].as_array().unwrap().contains(&"ro".into()),
                "{m}"
            );
        }
        // Without a network: a fresh namespace, no path.
        let spec = runtime_spec(&job(), None, "/fog-agent/j1", &[], None).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let namespaces = v["linux"]["namespaces"].as_array().unwrap();
        let net = namespaces.iter().find(|n| n["type"] == "network").unwrap();
        assert!(net.get("path").is_none(), "{net}");
    }

    #[test]
    fn no_scratch_is_a_read_only_tmpfs_and_no_host_path() {
        let spec = runtime_spec(&job(), None, "/fog-agent/j1", &[], None).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        assert!(
            mounts.iter().all(|m| m["type"] != "bind"),
            "no host path: {mounts:?}"
        );
        let scratch = mounts
            .iter()
            .find(|m| m["destination"] == SCRATCH_MOUNT)
            .unwrap();
        assert_eq!(scratch["type"], "tmpfs");
        assert!(scratch["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
    }

    /// The options of the mount at `dest`.
    fn mount_options(spec: &Spec, dest: &str) -> Vec<String> {
        let v = serde_json::to_value(spec).unwrap();
        let mount = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
            .unwrap_or_else(|| panic!("no mount at {dest}"))
            .clone();
        assert_eq!(mount["type"], "tmpfs", "{dest}");
        serde_json::from_value(mount["options"].clone()).unwrap()
    }

    #[test]
    fn tmp_is_writable_and_shm_is_sized_by_the_job() {
        let mut job = job();
        let spec = runtime_spec(&job, None, "/fog-agent/j1", &[], None).unwrap();
        let tmp = mount_options(&spec, TMP_MOUNT);
        assert!(!tmp.contains(&"ro".to_owned()), "{tmp:?}");
        assert!(tmp.contains(&"mode=1777".to_owned()), "{tmp:?}");
        assert!(tmp.contains(&format!("size={}", 64 << 20)), "{tmp:?}");
        let shm = mount_options(&spec, "/dev/shm");
        assert!(
            shm.contains(&format!("size={}", 32 << 20)),
            "half the memory: {shm:?}"
        );

        job.spec.resources.shm_bytes = 48 << 20;
        let spec = runtime_spec(&job, None, "/fog-agent/j1", &[], None).unwrap();
        let shm = mount_options(&spec, "/dev/shm");
        assert!(shm.contains(&format!("size={}", 48 << 20)), "{shm:?}");
    }

    #[test]
    fn quota_from_millicores() {
        assert_eq!(cpu_quota_micros(1000), 100_000);
        assert_eq!(cpu_quota_micros(250), 25_000);
        assert_eq!(cpu_quota_micros(2500), 250_000);
    }

    #[test]
    fn gpu_nodes_from_the_driver_proc_files() {
        let dir = tempfile::tempdir().unwrap();
        let info = dir.path().join("proc/driver/nvidia/gpus/0000:01:00.0");
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(info.join("information"), "Model: X\nDevice Minor: 3\n").unwrap();
        let fs = FsRoot::new(dir.path());
        let nodes = gpu_device_nodes(&fs, &["0000:01:00.0".into()]).unwrap();
        assert_eq!(nodes[0].path, Path::new("/dev/nvidia3"));
        assert_eq!((nodes[0].major, nodes[0].minor), (195, 3));
        assert!(gpu_device_nodes(&fs, &["0000:02:00.0".into()]).is_err());
        assert!(gpu_device_nodes(&fs, &[]).unwrap().is_empty());
    }
}
