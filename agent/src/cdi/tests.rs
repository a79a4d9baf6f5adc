//! Specs on temp roots: loading and trust, the GPU -> device rule, the apply policy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{MountBuilder, ProcessBuilder, Spec, SpecBuilder};

use super::*;

/// Root owns the temp files the checks want root-owned; without root the trust checks refuse
/// them, so these tests say so and stop.
fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A root with `/etc/cdi` holding `files`.
pub(crate) fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, FsRoot) {
    let dir = tempfile::tempdir().unwrap();
    let cdi = dir.path().join("etc/cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::set_permissions(&cdi, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in files {
        let path = cdi.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let fs = FsRoot::new(dir.path());
    (dir, fs)
}

fn dirs() -> Vec<PathBuf> {
    DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect()
}

/// nvidia-ctk's shape: index and UUID names, `all`, spec-wide edits with a hook, nodes by path
/// only.
const NVIDIA: &str = r#"
cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-1f0e4a2b-8c3d-4e5f-9a6b-7c8d9e0f1a2b
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  mounts:
  - hostPath: /usr/lib/libcuda.so.1
    containerPath: /usr/lib/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, update-ldcache, --folder, /usr/lib]
"#;

#[test]
fn specs_load_with_their_qualified_names_and_edits() {
    if !is_root() {
        return eprintln!("skipped: specs_load_with_their_qualified_names_and_edits: needs root");
    }
    let (_dir, fs) = root_with(&[("nvidia.yaml", NVIDIA), ("notes.txt", "ignored")]);
    let registry = Registry::load(&fs, &dirs());
    assert!(registry.problems.is_empty(), "{:?}", registry.problems);
    let names: Vec<&str> = registry.devices.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "nvidia.com/gpu=0",
            "nvidia.com/gpu=1",
            "nvidia.com/gpu=GPU-1f0e4a2b-8c3d-4e5f-9a6b-7c8d9e0f1a2b",
            "nvidia.com/gpu=all"
        ]
    );
    let gpu0 = &registry.devices["nvidia.com/gpu=0"];
    assert_eq!(gpu0.kind, "nvidia.com/gpu");
    assert_eq!(gpu0.spec_path, "/etc/cdi/nvidia.yaml");
    assert_eq!(gpu0.edits.device_nodes[0].path, "/dev/nvidia0");
    assert_eq!(gpu0.spec_edits.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
    assert_eq!(gpu0.spec_edits.mounts[0].host_path, "/usr/lib/libcuda.so.1");
    assert_eq!(gpu0.hook_count(), 1);
}

#[test]
fn untrusted_and_invalid_specs_are_skipped_with_the_reason() {
    if !is_root() {
        return eprintln!("skipped: untrusted_and_invalid_specs_are_skipped: needs root");
    }
    let (dir, fs) = root_with(&[
        ("a-writable.yaml", NVIDIA),
        ("b-bad-name.yaml", "cdiVersion: \"0.5.0\"\nkind: nvidia.com/gpu\ndevices:\n- name: \"a b\"\n  containerEdits:\n    env: [A=1]\n"),
        ("c-not-yaml.json", "{"),
        ("d-good.yaml", "cdiVersion: \"0.5.0\"\nkind: example.com/dev\ndevices:\n- name: x\n  containerEdits:\n    env: [A=1]\n"),
    ]);
    let writable = dir.path().join("etc/cdi/a-writable.yaml");
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("etc/cdi/d-good.yaml"),
        dir.path().join("etc/cdi/e-link.yaml"),
    )
    .unwrap();
    let registry = Registry::load(&fs, &dirs());
    let names: Vec<&str> = registry.devices.keys().map(String::as_str).collect();
    assert_eq!(names, ["example.com/dev=x"]);
    let problems = registry.problems.join("\n");
    assert_eq!(registry.problems.len(), 4, "{problems}");
    assert!(
        problems.contains("/etc/cdi/a-writable.yaml: not trusted: mode 666"),
        "{problems}"
    );
    assert!(
        problems.contains("/etc/cdi/b-bad-name.yaml: invalid CDI spec"),
        "{problems}"
    );
    assert!(
        problems.contains("/etc/cdi/c-not-yaml.json: not a CDI spec"),
        "{problems}"
    );
    assert!(
        problems.contains("/etc/cdi/e-link.yaml: cannot open"),
        "{problems}"
    );

    // A dir others may write to is not read at all.
    let cdi = dir.path().join("etc/cdi");
    std::fs::set_permissions(&cdi, std::fs::Permissions::from_mode(0o777)).unwrap();
    let registry = Registry::load(&fs, &dirs());
    assert!(registry.devices.is_empty());
    assert!(
        registry.problems[0].starts_with("/etc/cdi: not trusted"),
        "{:?}",
        registry.problems
    );
}

#[test]
fn a_later_dir_overrides_an_earlier_one() {
    if !is_root() {
        return eprintln!("skipped: a_later_dir_overrides_an_earlier_one: needs root");
    }
    let spec = |value: &str| {
        format!("cdiVersion: \"0.5.0\"\nkind: example.com/dev\ndevices:\n- name: x\n  containerEdits:\n    env: [A={value}]\n")
    };
    let (dir, fs) = root_with(&[("x.yaml", &spec("etc"))]);
    let run = dir.path().join("var/run/cdi");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("x.yaml"), spec("run")).unwrap();
    let registry = Registry::load(&fs, &dirs());
    assert_eq!(registry.devices["example.com/dev=x"].edits.env, ["A=run"]);
}

/// The driver's `/proc` file of a GPU, with its minor and UUID.
fn nvidia_proc(root: &Path, bus: &str, minor: u32, uuid: Option<&str>) {
    let dir = root.join(format!("proc/driver/nvidia/gpus/{bus}"));
    std::fs::create_dir_all(&dir).unwrap();
    let uuid = uuid
        .map(|u| format!("GPU UUID: \t {u}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("information"),
        format!("Model: \t\t NVIDIA A100\n{uuid}Device Minor: \t {minor}\n"),
    )
    .unwrap();
}

#[test]
fn gpus_map_to_devices_by_uuid_then_node_then_bus_id() {
    if !is_root() {
        return eprintln!("skipped: gpus_map_to_devices: needs root");
    }
    let (dir, fs) = root_with(&[("nvidia.yaml", NVIDIA)]);
    nvidia_proc(dir.path(), "0000:17:00.0", 0, None);
    nvidia_proc(dir.path(), "0000:65:00.0", 1, Some("GPU-other"));
    let registry = Registry::load(&fs, &dirs());
    let find = |bus: &str, uuid: Option<&str>| {
        find_gpu_device(
            &registry,
            &fs,
            GpuKey {
                pci_bus_id: bus,
                uuid,
            },
        )
        .map(|d| d.qualified_name.as_str())
    };
    // By the UUID NVML knows.
    assert_eq!(
        find(
            "0000:17:00.0",
            Some("gpu-1F0E4A2B-8c3d-4e5f-9a6b-7c8d9e0f1a2b")
        ),
        Some("nvidia.com/gpu=GPU-1f0e4a2b-8c3d-4e5f-9a6b-7c8d9e0f1a2b")
    );
    // Without it: by /dev/nvidia<minor>; `all` has more nodes, `0` and the UUID name tie and
    // the first by name wins.
    assert_eq!(find("0000:17:00.0", None), Some("nvidia.com/gpu=0"));
    // A UUID no device is named by falls through to the node.
    assert_eq!(find("0000:65:00.0", None), Some("nvidia.com/gpu=1"));
    // No driver file, no name: none.
    assert_eq!(find("0000:b3:00.0", None), None);

    // By PCI bus id as a name (NVML's 8-digit domain too).
    let (_dir, fs) = root_with(&[(
        "pci.yaml",
        "cdiVersion: \"0.5.0\"\nkind: example.com/gpu\ndevices:\n- name: \"00000000:B3:00.0\"\n  containerEdits:\n    env: [A=1]\n",
    )]);
    let registry = Registry::load(&fs, &dirs());
    let found = find_gpu_device(
        &registry,
        &fs,
        GpuKey {
            pci_bus_id: "0000:b3:00.0",
            uuid: None,
        },
    );
    assert_eq!(found.map(|d| d.name.as_str()), Some("00000000:B3:00.0"));
}

#[test]
fn amd_gpus_map_by_their_render_node_pci_path() {
    if !is_root() {
        return eprintln!("skipped: amd_gpus_map_by_their_render_node_pci_path: needs root");
    }
    let amd = "cdiVersion: \"0.5.0\"\nkind: amd.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/kfd\n    - path: /dev/dri/renderD128\n- name: \"1\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/kfd\n    - path: /dev/dri/renderD129\n";
    let (dir, fs) = root_with(&[("amd.yaml", amd)]);
    for (node, bus) in [
        ("renderD128", "0000:ca:00.0"),
        ("renderD129", "0000:cb:00.0"),
    ] {
        let drm = dir.path().join(format!("sys/class/drm/{node}"));
        std::fs::create_dir_all(&drm).unwrap();
        std::os::unix::fs::symlink(
            format!("../../../devices/pci0000:c9/{bus}"),
            drm.join("device"),
        )
        .unwrap();
    }
    let registry = Registry::load(&fs, &dirs());
    let found = find_gpu_device(
        &registry,
        &fs,
        GpuKey {
            pci_bus_id: "0000:cb:00.0",
            uuid: None,
        },
    );
    assert_eq!(
        found.map(|d| d.qualified_name.as_str()),
        Some("amd.com/gpu=1")
    );
}

fn job_spec() -> Spec {
    let mut spec = SpecBuilder::default()
        .process(
            ProcessBuilder::default()
                .args(vec!["sh".to_owned()])
                .env(vec!["PATH=/bin".to_owned(), "A=job".to_owned()])
                .build()
                .unwrap(),
        )
        .mounts(vec![
            MountBuilder::default()
                .destination("/dev")
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/scratch")
                .typ("bind")
                .source("/jobs/j/scratch")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    spec.set_hooks(None);
    spec
}

fn edits(yaml: &str) -> Edits {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn apply_adds_nodes_read_only_mounts_and_env_under_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsRoot::new(dir.path());
    std::fs::create_dir_all(dir.path().join("dev")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dir.path().join("dev/nvidia0")).unwrap();
    std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
    std::fs::write(dir.path().join("usr/lib/libcuda.so.1"), "fake").unwrap();
    let e = edits(
        r#"
env: [A=cdi, B=2]
deviceNodes:
- path: /dev/nvidia0
- path: /dev/nvidia-uvm
  type: c
  major: 511
  minor: 0
  permissions: rwm
mounts:
- hostPath: /usr/lib/libcuda.so.1
  containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1
  options: [rw, nosuid]
hooks:
- hookName: createContainer
  path: /usr/bin/nvidia-cdi-hook
"#,
    );
    let mut spec = job_spec();
    apply(
        &mut spec,
        &fs,
        "nvidia.com/gpu=0",
        &e,
        ApplyPolicy::default(),
    )
    .unwrap();
    // Twice (a second GPU of the same spec): nothing doubles.
    apply(
        &mut spec,
        &fs,
        "nvidia.com/gpu=0",
        &e,
        ApplyPolicy::default(),
    )
    .unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        v["process"]["env"],
        serde_json::json!(["PATH=/bin", "A=cdi", "B=2"])
    );
    let devices = v["linux"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(devices[0]["path"], "/dev/nvidia0");
    assert_eq!(
        (devices[0]["major"].clone(), devices[0]["minor"].clone()),
        (1.into(), 3.into())
    );
    assert_eq!(devices[0]["type"], "c");
    let rules = v["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| r["access"] == "rw" && r["allow"] == true),
        "{rules:?}"
    );
    let mounts = v["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    let lib = &mounts[2];
    assert_eq!(lib["destination"], "/usr/lib/x86_64-linux-gnu/libcuda.so.1");
    assert_eq!(
        lib["source"],
        dir.path().join("usr/lib/libcuda.so.1").to_str().unwrap()
    );
    assert_eq!(
        lib["options"],
        serde_json::json!(["nosuid", "rbind", "ro", "nodev"])
    );
    assert!(
        v.get("hooks").is_none(),
        "no hooks without [jobs] cdi_hooks: {v}"
    );

    let mut spec = job_spec();
    apply(&mut spec, &fs, "d", &e, ApplyPolicy { hooks: true }).unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        v["hooks"]["createContainer"][0]["path"],
        "/usr/bin/nvidia-cdi-hook"
    );
}

#[test]
fn apply_refuses_what_reaches_beyond_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsRoot::new(dir.path());
    std::fs::create_dir_all(dir.path().join("lib")).unwrap();
    std::fs::create_dir_all(dir.path().join("dev")).unwrap();
    std::os::unix::fs::symlink("/dev/loop0", dir.path().join("dev/sdx")).unwrap();
    std::fs::write(dir.path().join("dev/file"), "").unwrap();
    let cases = [
        (
            "mounts: [{hostPath: /lib, containerPath: /scratch}]",
            "overlap the job's mount at /scratch",
        ),
        (
            "mounts: [{hostPath: /lib, containerPath: /scratch/x}]",
            "overlap",
        ),
        ("mounts: [{hostPath: /lib, containerPath: /}]", "job's root"),
        (
            "mounts: [{hostPath: /lib, containerPath: /a/../dev}]",
            "contains ..",
        ),
        (
            "mounts: [{hostPath: /lib, containerPath: /dev/x}]",
            "overlap the job's mount at /dev",
        ),
        (
            "mounts: [{hostPath: /nope, containerPath: /x}]",
            "does not exist",
        ),
        (
            "mounts: [{hostPath: /lib, containerPath: /x, type: tmpfs}]",
            "only bind mounts",
        ),
        (
            "deviceNodes: [{path: /etc/x, major: 1, minor: 3}]",
            "not under /dev",
        ),
        (
            "deviceNodes: [{path: /dev/sdx, type: b, major: 8, minor: 0}]",
            "only character devices",
        ),
        ("deviceNodes: [{path: /dev/file}]", "not a character device"),
        ("deviceNodes: [{path: /dev/missing}]", "cannot stat"),
        (
            "netDevices: [{hostInterfaceName: eth0, name: eth0}]",
            "network devices",
        ),
        ("hooks: [{hookName: nope, path: /x}]", "unknown hook"),
    ];
    for (yaml, want) in cases {
        let mut spec = job_spec();
        let err = apply(
            &mut spec,
            &fs,
            "example.com/dev=x",
            &edits(yaml),
            ApplyPolicy { hooks: true },
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("CDI device example.com/dev=x: "), "{err}");
        assert!(err.contains(want), "{yaml}: {err}");
    }
}

/// nvidia-ctk's spec of an 8-GPU host: index and UUID names per GPU, `all`, 20 driver library
/// mounts and 3 hooks spec-wide. Prints what loading it takes (`cargo test -p fog-agent --lib
/// cdi::tests::an_eight_gpu_nvidia_spec_loads -- --nocapture`): it is read at every StartJob
/// that has GPUs.
#[test]
fn an_eight_gpu_nvidia_spec_loads() {
    if !is_root() {
        return eprintln!("skipped: an_eight_gpu_nvidia_spec_loads: needs root");
    }
    use std::fmt::Write as _;
    let mut spec = String::from("cdiVersion: \"0.5.0\"\nkind: nvidia.com/gpu\ndevices:\n");
    for i in 0..8 {
        for name in [
            format!("\"{i}\""),
            format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
        ] {
            let _ = write!(
                spec,
                "- name: {name}\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia{i}\n"
            );
        }
    }
    spec.push_str("- name: all\n  containerEdits:\n    deviceNodes:\n");
    for i in 0..8 {
        let _ = writeln!(spec, "    - path: /dev/nvidia{i}");
    }
    spec.push_str("containerEdits:\n  env: [NVIDIA_VISIBLE_DEVICES=void]\n  deviceNodes:\n  - path: /dev/nvidiactl\n  - path: /dev/nvidia-uvm\n  mounts:\n");
    for i in 0..20 {
        let _ = writeln!(
            spec,
            "  - hostPath: /usr/lib/x86_64-linux-gnu/libnv{i}.so.550.54.15\n    containerPath: /usr/lib/x86_64-linux-gnu/libnv{i}.so.550.54.15\n    options: [ro, nosuid, nodev, bind]"
        );
    }
    spec.push_str("  hooks:\n");
    for hook in [
        "create-symlinks",
        "update-ldcache",
        "disable-device-node-modification",
    ] {
        let _ = writeln!(
            spec,
            "  - hookName: createContainer\n    path: /usr/bin/nvidia-cdi-hook\n    args: [nvidia-cdi-hook, {hook}]\n    env: [NVIDIA_CTK_DEBUG=false]"
        );
    }
    let (_dir, fs) = root_with(&[("nvidia.yaml", &spec)]);
    for round in ["first (compiles the schema)", "second"] {
        let start = std::time::Instant::now();
        let registry = Registry::load(&fs, &dirs());
        let took = start.elapsed();
        assert!(registry.problems.is_empty(), "{:?}", registry.problems);
        assert_eq!(registry.devices.len(), 17);
        assert_eq!(
            registry.devices["nvidia.com/gpu=7"].spec_edits.mounts.len(),
            20
        );
        eprintln!(
            "8-GPU nvidia spec ({} bytes), {round} load: {took:?}",
            spec.len()
        );
    }
}
