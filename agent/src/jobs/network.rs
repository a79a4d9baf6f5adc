//! A job's network as the job runner handles it (`impl JobManager`): the host made ready and
//! host ports taken at admission (FAILED_PRECONDITION when the host cannot attach jobs,
//! RESOURCE_EXHAUSTED when no port is free), the attach before the bundle is written
//! (recorded at once, so every later end detaches it), the detach when the job ends, and the
//! reconciliation after a restart. Without `[jobs.network]` each of these does nothing.

use std::path::Path;

use super::bundle::BundleNetwork;
use super::manager::JobManager;
use super::model::JobRecord;
use super::spec::ValidJob;
use super::JobError;
use crate::net::{self, Attachment, NetCounters, NetError, NetworkRequest};

/// Paths of a job's network files in its job dir, as the bundle mounts them.
pub(super) struct NetworkFiles {
    netns: std::path::PathBuf,
    resolv_conf: std::path::PathBuf,
    hosts: std::path::PathBuf,
}

impl NetworkFiles {
    pub(super) fn bundle(&self) -> BundleNetwork<'_> {
        BundleNetwork {
            netns: &self.netns,
            resolv_conf: &self.resolv_conf,
            hosts: &self.hosts,
        }
    }
}

/// What a valid job asks of the network.
fn request(job: &ValidJob) -> NetworkRequest {
    let rate = |r: i64| u64::try_from(r).unwrap_or(0);
    NetworkRequest {
        ports: job
            .spec
            .ports
            .iter()
            .map(|p| (u16::try_from(p.container_port).unwrap_or(0), p.protocol))
            .collect(),
        ingress_bits_per_second: rate(job.spec.resources.ingress_bits_per_second),
        egress_bits_per_second: rate(job.spec.resources.egress_bits_per_second),
    }
}

impl JobManager {
    /// Makes sure the host can attach the job (FAILED_PRECONDITION naming what is missing)
    /// and takes host ports for its published ports (none without a network).
    pub(super) fn allocate_ports(&self, job: &ValidJob) -> Result<Vec<u16>, JobError> {
        let Some(networks) = &self.networks else {
            return Ok(Vec::new());
        };
        networks
            .prepare()
            .map_err(|err| JobError::NetworkUnavailable(err.to_string()))?;
        networks
            .allocate_ports(&request(job).ports)
            .map_err(|err| match err {
                NetError::NoFreePort { .. } => JobError::ResourceExhausted {
                    resource: "ports".to_owned(),
                    message: err.to_string(),
                },
                other => JobError::Network(other),
            })
    }

    /// Gives back ports [`Self::allocate_ports`] took for a job that was not started.
    pub(super) fn release_ports(&self, job: &ValidJob, host_ports: &[u16]) {
        if let Some(networks) = &self.networks {
            networks.release_ports(&request(job).ports, host_ports);
        }
    }

    /// Attaches the job's network and records it; the files its bundle mounts. `None` without
    /// a network.
    pub(super) fn attach_network(
        &self,
        job: &ValidJob,
        host_ports: &[u16],
        job_dir: &Path,
    ) -> Result<Option<NetworkFiles>, JobError> {
        let Some(networks) = &self.networks else {
            return Ok(None);
        };
        let id = &job.spec.job_id;
        let attachment = networks.attach(id, &request(job), host_ports, job_dir)?;
        let files = NetworkFiles {
            netns: attachment.netns.clone(),
            resolv_conf: job_dir.join(net::network::RESOLV_CONF),
            hosts: job_dir.join(net::network::HOSTS),
        };
        let message = format!("network attached: {}", attachment.addresses.join(", "));
        self.records.update(
            id,
            &message,
            |record| {
                record.network = Some(attachment);
                true
            },
            |t| self.publish(t),
        )?;
        Ok(Some(files))
    }

    /// Detaches an ended job's network, if it had one or left traces of one (errors logged:
    /// the job has ended either way).
    pub(super) fn detach_network(&self, id: &str, record: &JobRecord) {
        let Some(networks) = &self.networks else {
            return;
        };
        if record.network.is_some() || networks.has_traces(id) {
            if let Err(err) = networks.detach(id, record.network.as_ref()) {
                tracing::warn!(job = %id, error = %err, "cannot detach the job's network");
            }
        }
    }

    /// After a restart: the active jobs keep their networks and ports; anything else attached
    /// is detached.
    pub(super) fn reconcile_networks(&self) {
        let Some(networks) = &self.networks else {
            return;
        };
        let active: Vec<(String, Option<Attachment>)> = self.records.read(|t| {
            t.jobs
                .values()
                .filter(|e| e.view.record.state.is_active())
                .map(|e| (e.view.spec.job_id.clone(), e.view.record.network.clone()))
                .collect()
        });
        networks.reconcile(active.iter().map(|(id, a)| (id.as_str(), a.as_ref())));
    }
}

/// The traffic of a job so far, from its record's host interface.
pub(super) fn traffic(record: &JobRecord) -> Option<NetCounters> {
    NetCounters::of_job(&record.network.as_ref()?.host_interface)
}

/// As [`traffic`], from a `/proc/net/dev` table read once per telemetry tick.
pub(super) fn traffic_in(table: Option<&str>, record: &JobRecord) -> Option<NetCounters> {
    NetCounters::of_job_in(table?, &record.network.as_ref()?.host_interface)
}
