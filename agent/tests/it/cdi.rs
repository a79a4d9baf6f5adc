//! GPUs through CDI with real runc: the daemon in-process on a simulated host root (the jobs
//! harness of `jobs.rs`), CDI specs written into its `/etc/cdi`. A job given a GPU sees its CDI
//! device's node (a host char device, `/dev/null`'s 1:3 behind a symlink, created by runc at
//! the spec's path), the fake driver library mounted read-only at its path, and the
//! environment; without a spec the job runs in device-node mode and its notes say so, with the
//! command that generates the spec.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fog_agent::fsroot::FsRoot;
use fog_proto::v1 as pb;

use crate::jobs::{ended, inventory_with_one_gpu, spec, start, unique, wait_for, Harness};

const BUS: &str = "0000:17:00.0";

/// A host root: this host's `/sys` and `/proc` (symlinked), `/dev` with the given symlinks to
/// real device nodes, a fake driver library, and `/etc/cdi` (root-owned, 0755) with `specs`.
fn host_root(
    dir: &Path,
    nvidia_driver: bool,
    dev_links: &[(&str, &str)],
    specs: &[(&str, &str)],
) -> FsRoot {
    let root = crate::jobs::this_host_root(dir);
    let proc = root.join("proc");
    if nvidia_driver {
        let info = proc.join(format!("driver/nvidia/gpus/{BUS}"));
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(
            info.join("information"),
            "Model: \t\t NVIDIA A100 80GB PCIe\nIRQ:   \t\t 42\nDevice Minor: \t 0\n",
        )
        .unwrap();
    }
    for (link, target) in dev_links {
        std::os::unix::fs::symlink(target, root.join(link.trim_start_matches('/'))).unwrap();
    }
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libcuda.so.1"), "fake-driver-library\n").unwrap();
    let cdi = root.join("etc/cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cdi, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in specs {
        write_spec(&root, name, text);
    }
    FsRoot::new(root)
}

fn write_spec(root: &Path, name: &str, text: &str) {
    let path = root.join("etc/cdi").join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A harness whose daemon sees `fs` as the host, with one GPU at [`BUS`] of `vendor` in its
/// inventory (its CDI device found from the specs of `fs`).
async fn harness_on(fs_of: impl FnOnce(&Path) -> FsRoot + Send, vendor: &'static str) -> Harness {
    Harness::start_configured(
        |_| {},
        |dir, mut options| {
            let fs = fs_of(dir);
            options.fs = fs.clone();
            let gpu = fog_agent::inventory::gpu::Gpu {
                pci_bus_id: BUS.to_owned(),
                vendor: vendor.to_owned(),
                ..Default::default()
            };
            options.inventory_source = inventory_with_one_gpu(fs, gpu, |gpus, fs| {
                let dirs = fog_agent::cdi::DEFAULT_SPEC_DIRS.map(std::path::PathBuf::from);
                let mut notes = fog_agent::inventory::Notes::default();
                fog_agent::inventory::gpu::annotate_cdi(gpus, fs, &dirs, &mut notes);
            });
            options
        },
    )
    .await
}

/// Runs `script` with the GPU until it ends; the job and its stdout.
async fn run_with_gpu(h: &mut Harness, prefix: &str, script: &str) -> (pb::Job, String) {
    let id = unique(prefix);
    let mut s = spec(&id, script);
    s.resources.as_mut().unwrap().gpus = vec![BUS.to_owned()];
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    let dir = h.config.jobs.dir_under(&h.config.state.dir).join(&id);
    let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
    (job, out)
}

fn bundle_of(h: &Harness, id: &str) -> serde_json::Value {
    let path = h
        .config
        .jobs
        .dir_under(&h.config.state.dir)
        .join(format!("{id}/bundle/config.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn inventory_cdi_device(h: &mut Harness) -> String {
    let inventory = h
        .client
        .get_inventory(pb::GetInventoryRequest::default())
        .await
        .unwrap()
        .into_inner()
        .inventory
        .unwrap();
    inventory.gpus.unwrap().gpus[0].cdi_device.clone()
}

/// A vendor-neutral spec (`example.com/gpu`, the device named by the GPU's PCI bus id, no
/// NVIDIA driver on the host): the job sees the node, the library and the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_device_of_any_vendor_gives_the_job_its_node_library_and_env() {
    const SPEC: &str = r#"
cdiVersion: "0.6.0"
kind: example.com/gpu
devices:
- name: "0000:17:00.0"
  containerEdits:
    env: [EXAMPLE_DEVICE=card0]
    deviceNodes:
    - path: /dev/example0
      hostPath: /dev/example-host0
    mounts:
    - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1
      containerPath: /usr/lib/libexample.so.1
      options: [rw, bind]
"#;
    let mut h = harness_on(
        |dir| {
            host_root(
                dir,
                false,
                &[("/dev/example-host0", "/dev/null")],
                &[("example.yaml", SPEC)],
            )
        },
        "Example",
    )
    .await;
    assert_eq!(crate::jobs::wait_capacity_gpus(&mut h.client).await, [BUS]);
    assert_eq!(
        inventory_cdi_device(&mut h).await,
        "example.com/gpu=0000:17:00.0"
    );
    let script = "cat /usr/lib/libexample.so.1; echo \"env=$EXAMPLE_DEVICE\"; \
                  ls -l /dev/example0; cat /dev/example0 && echo node-readable; \
                  (echo x > /usr/lib/libexample.so.1) 2>/dev/null || echo library-read-only";
    let (job, out) = run_with_gpu(&mut h, "cdi-example", script).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?} {out}");
    assert!(out.contains("fake-driver-library"), "{out}");
    assert!(out.contains("env=card0"), "{out}");
    let ls = out.lines().find(|l| l.contains("/dev/example0")).unwrap();
    assert!(
        ls.starts_with('c') && ls.contains("1,   3"),
        "a char device 1:3: {ls}"
    );
    assert!(out.contains("node-readable"), "{out}");
    assert!(out.contains("library-read-only"), "{out}");
    assert_eq!(
        job.notes,
        [format!(
            "GPU {BUS}: CDI device example.com/gpu=0000:17:00.0 (/etc/cdi/example.yaml)"
        )]
    );
    let bundle = bundle_of(&h, &job.spec.as_ref().unwrap().job_id);
    let lib = bundle["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/usr/lib/libexample.so.1")
        .unwrap();
    let options = lib["options"].as_array().unwrap();
    assert!(
        options.contains(&"ro".into()) && !options.contains(&"rw".into()),
        "{lib}"
    );
}

/// The simulated NVIDIA host, first without a spec (device-node mode, noted), then with
/// nvidia-ctk's shape of spec (`nvidia.com/gpu`, the GPU found by its `/dev/nvidia0` node,
/// spec-wide edits, a hook left out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_gpu_without_a_spec_is_device_node_mode_then_cdi_once_generated() {
    const SPEC: &str = r#"
cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
"#;
    let links = [
        ("/dev/nvidia0", "/dev/null"),
        ("/dev/nvidiactl", "/dev/zero"),
    ];
    let mut h = harness_on(|dir| host_root(dir, true, &links, &[]), "NVIDIA").await;
    assert_eq!(crate::jobs::wait_capacity_gpus(&mut h.client).await, [BUS]);
    assert_eq!(
        inventory_cdi_device(&mut h).await,
        "",
        "no spec, no CDI device"
    );

    // Device-node mode: /dev/nvidia0 (195:0) only, and the notes say so and how to fix it.
    let (job, out) = run_with_gpu(
        &mut h,
        "cdi-none",
        "ls /usr/lib/x86_64-linux-gnu/libcuda.so.1 || echo no-library",
    )
    .await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?} {out}");
    assert!(out.contains("no-library"), "{out}");
    assert_eq!(
        job.notes,
        [format!("GPU {BUS}: no CDI device: device-node mode (its /dev/nvidia* nodes only, no driver libraries; generate the spec: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)")]
    );
    let bundle = bundle_of(&h, &job.spec.as_ref().unwrap().job_id);
    let devices = bundle["linux"]["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["path"] == "/dev/nvidia0" && d["major"] == 195 && d["minor"] == 0),
        "{devices:?}"
    );

    // The operator generates the spec: the next job gets the GPU through CDI.
    let root = h.config.state.dir.parent().unwrap().join("root");
    write_spec(&root, "nvidia.yaml", SPEC);
    let script =
        "cat /usr/lib/x86_64-linux-gnu/libcuda.so.1; echo \"visible=$NVIDIA_VISIBLE_DEVICES\"; \
                  ls -l /dev/nvidia0 /dev/nvidiactl; cat /dev/nvidia0 && echo nvidia0-readable";
    let (job, out) = run_with_gpu(&mut h, "cdi-nvidia", script).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?} {out}");
    assert!(out.contains("fake-driver-library"), "{out}");
    assert!(out.contains("visible=void"), "{out}");
    assert!(out.contains("nvidia0-readable"), "{out}");
    for (node, numbers) in [("/dev/nvidia0", "1,   3"), ("/dev/nvidiactl", "1,   5")] {
        let ls = out.lines().find(|l| l.contains(node)).unwrap();
        assert!(ls.starts_with('c') && ls.contains(numbers), "{node}: {ls}");
    }
    assert_eq!(
        job.notes,
        [
            format!("GPU {BUS}: CDI device nvidia.com/gpu=0 (/etc/cdi/nvidia.yaml)"),
            format!(
                "GPU {BUS}: 1 CDI hook(s) of nvidia.com/gpu=0 not run ([jobs] cdi_hooks = false)"
            ),
        ]
    );
    let bundle = bundle_of(&h, &job.spec.as_ref().unwrap().job_id);
    assert!(bundle.get("hooks").is_none(), "{bundle}");
    let devices = bundle["linux"]["devices"].as_array().unwrap();
    assert!(
        !devices.iter().any(|d| d["major"] == 195),
        "no device-node mode node: {devices:?}"
    );
}

/// `fog-agent inventory` on the server fixture (three GPUs on the PCI bus) with a CDI spec for
/// one of them: that GPU names its CDI device, the others say device-node mode and how to
/// generate the spec, in the human summary and in the JSON document.
#[test]
fn inventory_reports_which_gpus_have_a_cdi_device() {
    const SPEC: &str = "cdiVersion: \"0.5.0\"\nkind: example.com/gpu\ndevices:\n- name: \"0000:17:00.0\"\n  containerEdits:\n    env: [A=1]\n";
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server-2s-smt");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let name = entry.unwrap().file_name();
        if name != "etc" {
            std::os::unix::fs::symlink(fixture.join(&name), root.join(&name)).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("etc/cdi")).unwrap();
    for entry in std::fs::read_dir(fixture.join("etc")).unwrap() {
        let name = entry.unwrap().file_name();
        std::os::unix::fs::symlink(
            fixture.join("etc").join(&name),
            root.join("etc").join(&name),
        )
        .unwrap();
    }
    std::fs::set_permissions(root.join("etc/cdi"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_spec(root, "example.yaml", SPEC);

    let run = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fog-agent"));
        command.arg("inventory").arg("--root").arg(root);
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let text = run(false);
    assert!(
        text.contains("0000:17:00.0: CDI device example.com/gpu=0000:17:00.0"),
        "{text}"
    );
    assert!(
        text.contains("0000:65:00.0: no CDI device: device-node mode (generate the spec: nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let gpus = json["gpus"]["data"]["gpus"].as_array().unwrap();
    let cdi: Vec<&serde_json::Value> = gpus.iter().map(|g| &g["cdi_device"]).collect();
    assert_eq!(
        cdi,
        [
            &serde_json::json!("example.com/gpu=0000:17:00.0"),
            &serde_json::Value::Null,
            &serde_json::Value::Null
        ]
    );
}
