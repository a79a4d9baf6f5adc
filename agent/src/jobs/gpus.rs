//! A job's GPUs in its bundle: through CDI where the host has a CDI device for the GPU, in
//! device-node mode otherwise.
//!
//! [`GpuSetup::select`] runs at StartJob, before the record is made: it reads the CDI specs of
//! `[jobs] cdi_spec_dirs` (only when the job has GPUs), finds each GPU's device
//! ([`crate::cdi::find_gpu_device`]) and writes the job's notes: which CDI device each GPU
//! got, or that it runs in device-node mode (its `/dev/nvidia*` nodes only, no driver
//! libraries, with the command that generates the spec), skipped spec files, and hooks left out
//! (`[jobs] cdi_hooks = false`). [`GpuSetup::device_nodes`] and [`GpuSetup::apply`] then build
//! the bundle: device-node GPUs through [`super::bundle::gpu_device_nodes`], CDI ones by applying
//! each spec's spec-wide edits once and each device's edits ([`crate::cdi::apply`]).

use oci_spec::runtime::Spec;

use super::bundle::{self, DeviceNode};
use super::spec::GpuIdentity;
use super::JobError;
use crate::cdi::{self, ApplyPolicy, Device, GpuKey, Registry};
use crate::config::JobsConfig;
use crate::fsroot::FsRoot;

/// How a job's GPUs get into its container.
#[derive(Debug, Clone, Default)]
pub struct GpuSetup {
    /// GPUs with a CDI device: (PCI bus id, device).
    cdi: Vec<(String, Device)>,
    /// GPUs in device-node mode, by PCI bus id.
    nodes_only: Vec<String>,
    /// Whether CDI hooks are applied.
    hooks: bool,
    /// What the job's record says of its GPUs.
    pub notes: Vec<String>,
}

impl GpuSetup {
    /// Chooses CDI or device-node mode for each of `gpus` (PCI bus ids; their UUIDs, when
    /// NVML knows them, from `host_gpus`); see the module doc.
    pub fn select(
        fs: &FsRoot,
        config: &JobsConfig,
        gpus: &[String],
        host_gpus: &[GpuIdentity],
    ) -> Self {
        let mut setup = Self {
            hooks: config.cdi_hooks,
            ..Self::default()
        };
        if gpus.is_empty() {
            return setup;
        }
        let registry = Registry::load(fs, &config.cdi_spec_dirs);
        for problem in &registry.problems {
            setup.notes.push(format!("CDI spec skipped: {problem}"));
        }
        for gpu in gpus {
            let uuid = host_gpus
                .iter()
                .find(|g| g.pci_bus_id == *gpu)
                .and_then(|g| g.uuid.as_deref());
            let key = GpuKey {
                pci_bus_id: gpu,
                uuid,
            };
            match cdi::find_gpu_device(&registry, fs, key) {
                Some(device) => {
                    setup.notes.push(format!(
                        "GPU {gpu}: CDI device {} ({})",
                        device.qualified_name, device.spec_path
                    ));
                    let hooks = device.hook_count();
                    if hooks > 0 && !config.cdi_hooks {
                        setup.notes.push(format!(
                            "GPU {gpu}: {hooks} CDI hook(s) of {} not run ([jobs] cdi_hooks = false)",
                            device.qualified_name
                        ));
                    }
                    setup.cdi.push((gpu.clone(), device.clone()));
                }
                None => {
                    setup.notes.push(format!(
                        "GPU {gpu}: no CDI device: device-node mode (its /dev/nvidia* nodes only, no driver libraries; generate the spec: {})",
                        cdi::GENERATE_COMMAND
                    ));
                    setup.nodes_only.push(gpu.clone());
                }
            }
        }
        setup
    }

    /// The device nodes of the GPUs in device-node mode.
    pub fn device_nodes(&self, fs: &FsRoot) -> Result<Vec<DeviceNode>, JobError> {
        bundle::gpu_device_nodes(fs, &self.nodes_only)
    }

    /// Applies the CDI devices' edits (each spec's spec-wide edits once) to `spec`.
    pub fn apply(&self, spec: &mut Spec, fs: &FsRoot) -> Result<(), JobError> {
        let policy = ApplyPolicy { hooks: self.hooks };
        let mut specs_applied: Vec<&str> = Vec::new();
        for (gpu, device) in &self.cdi {
            let failed = |err: cdi::CdiError| JobError::Gpu(format!("GPU {gpu}: {err}"));
            if !specs_applied.contains(&device.spec_path.as_str()) {
                specs_applied.push(&device.spec_path);
                cdi::apply(spec, fs, &device.kind, &device.spec_edits, policy).map_err(failed)?;
            }
            cdi::apply(spec, fs, &device.qualified_name, &device.edits, policy).map_err(failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::tests::root_with;

    const SPEC: &str = "cdiVersion: \"0.5.0\"\nkind: example.com/gpu\ndevices:\n- name: \"0000:17:00.0\"\n  containerEdits:\n    env: [A=1]\n    hooks: [{hookName: createContainer, path: /bin/true}]\n";

    #[test]
    fn each_gpu_is_given_through_cdi_or_device_nodes_and_noted() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return eprintln!("skipped: each_gpu_is_given_through_cdi_or_device_nodes_and_noted: needs root (spec files must be root-owned)");
        }
        let by_uuid = "cdiVersion: \"0.5.0\"\nkind: example.com/byuuid\ndevices:\n- name: GPU-abc\n  containerEdits:\n    env: [B=1]\n";
        let (_dir, fs) = root_with(&[
            ("example.yaml", SPEC),
            ("broken.yaml", "kind: x"),
            ("uuid.yaml", by_uuid),
        ]);
        let config = JobsConfig::default();
        let gpus = ["0000:17:00.0".to_owned(), "0000:65:00.0".to_owned()];
        let setup = GpuSetup::select(&fs, &config, &gpus, &[]);
        assert_eq!(setup.notes.len(), 4, "{:?}", setup.notes);
        assert!(setup.notes[0].starts_with("CDI spec skipped: /etc/cdi/broken.yaml: "));
        assert_eq!(
            setup.notes[1],
            "GPU 0000:17:00.0: CDI device example.com/gpu=0000:17:00.0 (/etc/cdi/example.yaml)"
        );
        assert_eq!(
            setup.notes[2],
            "GPU 0000:17:00.0: 1 CDI hook(s) of example.com/gpu=0000:17:00.0 not run ([jobs] cdi_hooks = false)"
        );
        assert!(setup.notes[3].starts_with("GPU 0000:65:00.0: no CDI device: device-node mode"));
        assert!(setup.notes[3].ends_with(&format!("generate the spec: {})", cdi::GENERATE_COMMAND)));
        assert_eq!(setup.nodes_only, ["0000:65:00.0"]);
        // Device-node mode needs the driver's /proc file; this root has none.
        assert!(setup.device_nodes(&fs).is_err());
        // The UUID NVML knows of the second GPU names its device.
        let host = [GpuIdentity {
            pci_bus_id: "0000:65:00.0".to_owned(),
            uuid: Some("GPU-abc".to_owned()),
        }];
        let setup = GpuSetup::select(&fs, &config, &gpus[1..], &host);
        assert_eq!(
            setup.notes[1],
            "GPU 0000:65:00.0: CDI device example.com/byuuid=GPU-abc (/etc/cdi/uuid.yaml)"
        );
        // No GPU: no spec read, no note.
        assert!(GpuSetup::select(&fs, &config, &[], &[]).notes.is_empty());
    }
}
