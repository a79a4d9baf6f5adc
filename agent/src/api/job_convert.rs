//! Jobs: proto <-> domain at the service boundary.

use std::time::{Duration, UNIX_EPOCH};

use fog_proto::v1 as pb;

use super::ApiError;

use crate::jobs::logs::{Line, Stream};
use crate::jobs::manager::{JobGpuSample, Sample, Usage};
use crate::jobs::spec::PortSpec;
use crate::jobs::{JobSpec, JobState, JobView, Resources, Termination};
use crate::net::Protocol;

fn timestamp(unix_millis: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(unix_millis))
}

/// A spec of one kind from a spec of the other: the domain [`JobSpec`] and the proto's have
/// the same fields, named here once for both directions (only `resources` is optional in the
/// proto: `wrap` is `Some` towards it).
macro_rules! convert_spec {
    ($spec:expr, $resources:expr, $To:ident, $ToResources:ident, $wrap:expr) => {{
        let (spec, r) = ($spec, $resources);
        $To {
            job_id: spec.job_id.clone(),
            image: spec.image.clone(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            resources: $wrap($ToResources {
                cpu_millicores: r.cpu_millicores,
                memory_bytes: r.memory_bytes,
                pids: r.pids,
                gpus: r.gpus.clone(),
                scratch_bytes: r.scratch_bytes,
                ingress_bits_per_second: r.ingress_bits_per_second,
                egress_bits_per_second: r.egress_bits_per_second,
                shm_bytes: r.shm_bytes,
            }),
            time_limit_millis: spec.time_limit_millis,
            labels: spec.labels.clone().into_iter().collect(),
            ports: spec.ports.iter().map(|p| p.into()).collect(),
        }
    }};
}

impl From<&pb::PortMapping> for PortSpec {
    fn from(port: &pb::PortMapping) -> Self {
        Self {
            container_port: port.container_port,
            // An unknown protocol number is refused by validation as not given.
            protocol: protocol(pb::PortProtocol::try_from(port.protocol).unwrap_or_default()),
        }
    }
}

impl From<&PortSpec> for pb::PortMapping {
    fn from(port: &PortSpec) -> Self {
        Self {
            container_port: port.container_port,
            protocol: proto_protocol(port.protocol).into(),
        }
    }
}

fn protocol(protocol: pb::PortProtocol) -> Protocol {
    match protocol {
        pb::PortProtocol::Unspecified => Protocol::Unspecified,
        pb::PortProtocol::Tcp => Protocol::Tcp,
        pb::PortProtocol::Udp => Protocol::Udp,
    }
}

fn proto_protocol(protocol: Protocol) -> pb::PortProtocol {
    match protocol {
        Protocol::Unspecified => pb::PortProtocol::Unspecified,
        Protocol::Tcp => pb::PortProtocol::Tcp,
        Protocol::Udp => pb::PortProtocol::Udp,
    }
}

/// The spec of a StartJob request; a missing spec is INVALID_ARGUMENT.
pub fn job_spec(spec: Option<&pb::JobSpec>) -> Result<JobSpec, ApiError> {
    let spec = spec.ok_or_else(|| ApiError::invalid("spec", "required"))?;
    let r = spec.resources.clone().unwrap_or_default();
    Ok(convert_spec!(
        spec,
        &r,
        JobSpec,
        Resources,
        std::convert::identity
    ))
}

fn proto_spec(spec: &JobSpec) -> pb::JobSpec {
    use pb::{JobResources, JobSpec as ProtoSpec};
    convert_spec!(spec, &spec.resources, ProtoSpec, JobResources, Some)
}

fn state(state: JobState) -> pb::JobState {
    match state {
        JobState::Creating => pb::JobState::Creating,
        JobState::Running => pb::JobState::Running,
        JobState::Stopping => pb::JobState::Stopping,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Stopped => pb::JobState::Stopped,
    }
}

fn termination(t: Option<Termination>) -> pb::TerminationReason {
    match t {
        None => pb::TerminationReason::Unspecified,
        Some(Termination::Exited) => pb::TerminationReason::Exited,
        Some(Termination::OomKilled) => pb::TerminationReason::OomKilled,
        Some(Termination::StopRequested) => pb::TerminationReason::StopRequested,
        Some(Termination::TimeLimit) => pb::TerminationReason::TimeLimit,
        Some(Termination::ScratchLimit) => pb::TerminationReason::ScratchLimit,
        Some(Termination::StartFailed) => pb::TerminationReason::StartFailed,
        Some(Termination::Lost) => pb::TerminationReason::Lost,
    }
}

/// Usage counters.
pub fn usage(usage: &Usage) -> pb::JobUsage {
    pb::JobUsage {
        duration_millis: usage.duration_millis,
        cpu_seconds: usage.cpu_nanos as f64 / 1e9,
        memory_gib_seconds: usage.memory_mib_millis as f64 / 1024.0 / 1000.0,
        gpus: usage
            .gpu_millis
            .iter()
            .map(|(id, ms)| pb::GpuUsage {
                pci_bus_id: id.clone(),
                gpu_seconds: *ms as f64 / 1000.0,
            })
            .collect(),
        gpu_note: usage.gpu_note.clone(),
        updated_at: (usage.updated_at_millis > 0).then(|| timestamp(usage.updated_at_millis)),
        network_receive_bytes: usage.network.in_bytes,
        network_receive_packets: usage.network.in_packets,
        network_transmit_bytes: usage.network.out_bytes,
        network_transmit_packets: usage.network.out_packets,
    }
}

/// A telemetry sample.
pub fn sample(sample: &Sample) -> pb::JobSample {
    let s = &sample.stats;
    pb::JobSample {
        taken_at: Some(timestamp(sample.taken_at_millis)),
        cpu_usage_nanos: s.cpu_usage_nanos,
        cpu_user_nanos: s.cpu_user_nanos,
        cpu_system_nanos: s.cpu_system_nanos,
        cpu_nr_periods: s.cpu_nr_periods,
        cpu_nr_throttled: s.cpu_nr_throttled,
        cpu_throttled_nanos: s.cpu_throttled_nanos,
        memory_usage_bytes: s.memory_usage_bytes,
        memory_peak_bytes: s.memory_peak_bytes,
        memory_limit_bytes: s.memory_limit_bytes,
        oom_kills: s.oom_kills,
        pids_current: s.pids_current,
        pids_limit: s.pids_limit,
        io_read_bytes: s.io_read_bytes,
        io_write_bytes: s.io_write_bytes,
        scratch_used_bytes: sample.scratch_used_bytes,
        notes: s.notes.clone(),
        gpus: sample.gpus.iter().map(gpu_sample).collect(),
        network_receive_bytes: sample.network.map(|n| n.in_bytes),
        network_receive_packets: sample.network.map(|n| n.in_packets),
        network_transmit_bytes: sample.network.map(|n| n.out_bytes),
        network_transmit_packets: sample.network.map(|n| n.out_packets),
    }
}

fn gpu_sample(gpu: &JobGpuSample) -> pb::JobGpuSample {
    let (used, note) = match &gpu.used {
        Ok(used) => (*used, String::new()),
        Err(note) => (Default::default(), note.clone()),
    };
    pb::JobGpuSample {
        pci_bus_id: gpu.pci_bus_id.clone(),
        memory_used_bytes: used.memory_used_bytes,
        sm_utilization_percent: used.sm_utilization_percent,
        note,
    }
}

/// A job.
pub fn job(view: &JobView) -> pb::Job {
    let r = &view.record;
    pb::Job {
        spec: Some(proto_spec(&view.spec)),
        state: state(r.state).into(),
        created_at: Some(timestamp(r.created_at_millis)),
        started_at: r.started_at_millis.map(timestamp),
        finished_at: r.finished_at_millis.map(timestamp),
        termination: termination(r.termination).into(),
        exit_code: r.exit_code,
        message: r.message.clone(),
        usage: Some(usage(&view.usage)),
        last_sample: view.last_sample.as_deref().map(sample),
        gpu_pci_bus_ids: r.gpus.clone(),
        cgroups_path: r.cgroups_path.clone(),
        addresses: r
            .network
            .as_ref()
            .map(|n| n.addresses.clone())
            .unwrap_or_default(),
        published_ports: r
            .network
            .iter()
            .flat_map(|n| &n.ports)
            .map(|p| pb::PublishedPort {
                container_port: p.container_port.into(),
                protocol: proto_protocol(p.protocol).into(),
                host_address: p.host_address.map(|a| a.to_string()).unwrap_or_default(),
                host_port: p.host_port.into(),
            })
            .collect(),
        notes: r.notes.clone(),
    }
}

/// A log line.
pub fn log_line(line: Line) -> pb::LogLine {
    pb::LogLine {
        stream: match line.stream {
            Stream::Stdout => pb::LogStream::Stdout,
            Stream::Stderr => pb::LogStream::Stderr,
        }
        .into(),
        line: line.bytes,
        offset: line.offset,
    }
}

/// StopJob's grace: 0 = the default, at most 60 s.
pub fn stop_grace(millis: u64) -> Result<Duration, ApiError> {
    match millis {
        0 => Ok(crate::jobs::manager::DEFAULT_STOP_GRACE),
        1..=60_000 => Ok(Duration::from_millis(millis)),
        _ => Err(ApiError::invalid(
            "grace_millis",
            format!("{millis} is more than 60000"),
        )),
    }
}

/// JobLogs' tail: at most 100000 lines.
pub fn tail_lines(n: u32) -> Result<usize, ApiError> {
    if n > 100_000 {
        return Err(ApiError::invalid(
            "tail_lines",
            format!("{n} is more than 100000"),
        ));
    }
    Ok(n as usize)
}

/// Most jobs in one ListJobs page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// ListJobs' page size: 0 or above [`MAX_PAGE_SIZE`] is [`MAX_PAGE_SIZE`].
pub fn page_size(n: u32) -> usize {
    match usize::try_from(n) {
        Ok(n @ 1..=MAX_PAGE_SIZE) => n,
        _ => MAX_PAGE_SIZE,
    }
}

/// The token of the page after the job at position `seq` of the job table of run `epoch`
/// (opaque to clients: `<epoch>.<seq>` in hex).
pub fn next_page_token(epoch: u64, seq: u64) -> String {
    format!("{epoch:x}.{seq:x}")
}

/// The position a ListJobs `page_token` continues after (None for the first page); a token of
/// another run of the agent, or one it never issued, is INVALID_ARGUMENT.
pub fn page_token(token: &str, epoch: u64) -> Result<Option<u64>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let parsed = token.split_once('.').and_then(|(e, s)| {
        Some((
            u64::from_str_radix(e, 16).ok()?,
            u64::from_str_radix(s, 16).ok()?,
        ))
    });
    match parsed {
        Some((e, seq)) if e == epoch => Ok(Some(seq)),
        Some(_) => Err(ApiError::invalid(
            "page_token",
            "issued before the agent restarted: list again from the first page",
        )),
        None => Err(ApiError::invalid(
            "page_token",
            format!(
                "{} is not a token this agent issued",
                crate::jobs::spec::quote(token)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused() {
        assert!(job_spec(None).is_err());
        assert!(stop_grace(60_001).is_err());
        assert_eq!(stop_grace(0).unwrap(), Duration::from_secs(5));
        assert!(tail_lines(100_001).is_err());
        assert!(page_token("nope", 1).is_err());
        assert!(page_token(&next_page_token(1, 7), 2).is_err());
        assert_eq!(page_token(&next_page_token(1, 7), 1).unwrap(), Some(7));
        assert_eq!(page_token("", 1).unwrap(), None);
        assert_eq!(page_size(0), MAX_PAGE_SIZE);
        assert_eq!(page_size(5), 5);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
    }

    #[test]
    fn usage_units() {
        let u = usage(&Usage {
            cpu_nanos: 1_500_000_000,
            memory_mib_millis: 1024 * 1000 * 2,
            ..Usage::default()
        });
        assert_eq!(u.cpu_seconds, 1.5);
        assert_eq!(u.memory_gib_seconds, 2.0);
    }
}
