//! What receipt a job needs next ([`next_kind`]) and its draft body ([`draft`]): pure
//! functions of the job's view and the newest receipt of its chain ([`Head`]).
//!
//! Where each figure comes from: `run_millis`, `cpu_nanos`, `memory_mib_millis`,
//! `net_in_bytes`/`net_out_bytes` are the job runner's usage counters ([`crate::jobs::model`]'s
//! `Usage`); `gpu_millis` is its per-GPU time, keyed by the GPU's UUID when known, else by the
//! PCI bus id; `memory_peak_bytes` is the cgroup's high-water mark (`memory.max_usage_in_bytes`
//! / `memory.peak`) of the newest sample; `disk_peak_bytes` the largest scratch use among the
//! samples read at receipt time. Every counter is held to at least its value in the previous
//! receipt, so a chain never decreases even when a source reads lower (a restarted agent, a
//! cgroup gone at the end).

use fog_tpm::receipt::{ReceiptBody, ReceiptKind, ReceiptUsage, RECEIPT_FORMAT};
use sha2::{Digest as _, Sha256};

use crate::jobs::{JobState, JobView};

/// The newest receipt (signed or draft) of a job's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its seq.
    pub seq: u64,
    /// Its kind.
    pub kind: ReceiptKind,
    /// The end of its interval, Unix ms.
    pub to_unix_millis: u64,
    /// Its usage.
    pub usage: ReceiptUsage,
}

impl Head {
    /// The head a body makes.
    pub fn of(body: &ReceiptBody) -> Self {
        Self {
            seq: body.seq,
            kind: body.kind,
            to_unix_millis: body.to_unix_millis,
            usage: body.usage.clone(),
        }
    }
}

/// The kind of the receipt job `view` needs now after `head` (None: none now). A job that
/// never ran gets none; a chain ends with its `end`.
pub fn next_kind(view: &JobView, head: Option<&Head>, interval_millis: u64) -> Option<ReceiptKind> {
    view.record.started_at_millis?;
    let Some(head) = head else {
        return Some(ReceiptKind::Start);
    };
    if head.kind == ReceiptKind::End {
        return None;
    }
    if !view.record.state.is_active() {
        return Some(ReceiptKind::End);
    }
    let running = matches!(view.record.state, JobState::Running | JobState::Stopping);
    let due = view.usage.duration_millis >= head.usage.run_millis.saturating_add(interval_millis);
    (running && due).then_some(ReceiptKind::Periodic)
}

/// Lowercase hex SHA-256 of a job's spec JSON as the job runner stores it.
pub fn spec_sha256(view: &JobView) -> String {
    let json = serde_json::to_string(&view.spec).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// The usage of `view` now, each counter at least `floor`'s; GPUs keyed by `gpu_key`.
pub fn usage(
    view: &JobView,
    floor: Option<&ReceiptUsage>,
    gpu_key: &dyn Fn(&str) -> String,
) -> ReceiptUsage {
    let u = &view.usage;
    let sample = view.last_sample.as_deref();
    let stats = sample.map(|s| &s.stats);
    let mut out = ReceiptUsage {
        run_millis: u.duration_millis,
        cpu_nanos: u.cpu_nanos,
        memory_mib_millis: u.memory_mib_millis,
        memory_peak_bytes: stats
            .and_then(|s| s.memory_peak_bytes.or(s.memory_usage_bytes))
            .unwrap_or(0),
        gpu_millis: u
            .gpu_millis
            .iter()
            .map(|(bus, ms)| (gpu_key(bus), *ms))
            .collect(),
        net_in_bytes: u.network.in_bytes,
        net_out_bytes: u.network.out_bytes,
        disk_peak_bytes: sample.and_then(|s| s.scratch_used_bytes).unwrap_or(0),
    };
    if let Some(floor) = floor {
        out.run_millis = out.run_millis.max(floor.run_millis);
        out.cpu_nanos = out.cpu_nanos.max(floor.cpu_nanos);
        out.memory_mib_millis = out.memory_mib_millis.max(floor.memory_mib_millis);
        out.memory_peak_bytes = out.memory_peak_bytes.max(floor.memory_peak_bytes);
        out.net_in_bytes = out.net_in_bytes.max(floor.net_in_bytes);
        out.net_out_bytes = out.net_out_bytes.max(floor.net_out_bytes);
        out.disk_peak_bytes = out.disk_peak_bytes.max(floor.disk_peak_bytes);
        for (gpu, ms) in &floor.gpu_millis {
            let v = out.gpu_millis.entry(gpu.clone()).or_default();
            *v = (*v).max(*ms);
        }
    }
    out
}

/// The draft of the `kind` receipt of `view` after `head`, at `now_millis`: everything but
/// `host_id`, `key` and `prev`, which signing fills in.
pub fn draft(
    view: &JobView,
    head: Option<&Head>,
    kind: ReceiptKind,
    now_millis: u64,
    gpu_key: &dyn Fn(&str) -> String,
) -> ReceiptBody {
    let record = &view.record;
    let started = record.started_at_millis.unwrap_or(record.created_at_millis);
    let from = head.map_or(started, |h| h.to_unix_millis);
    let (to, usage) = match kind {
        // Counters start at zero: whatever ran before the receipt is in the next one.
        ReceiptKind::Start => (from, ReceiptUsage::default()),
        ReceiptKind::Periodic => (
            now_millis.max(from),
            usage(view, head.map(|h| &h.usage), gpu_key),
        ),
        ReceiptKind::End => (
            record.finished_at_millis.unwrap_or(now_millis).max(from),
            usage(view, head.map(|h| &h.usage), gpu_key),
        ),
    };
    let termination = (kind == ReceiptKind::End).then(|| termination(view));
    ReceiptBody {
        format: RECEIPT_FORMAT.to_owned(),
        host_id: String::new(),
        job_id: view.spec.job_id.clone(),
        seq: head.map_or(0, |h| h.seq + 1),
        prev: String::new(),
        key: String::new(),
        kind,
        labels: view.spec.labels.clone(),
        image_digest: record.image_digest.clone(),
        spec_sha256: spec_sha256(view),
        from_unix_millis: from,
        to_unix_millis: to,
        usage,
        termination,
    }
}

/// The termination reason as the job model names it (`exited`, `oom_killed`, ...); the
/// final state's name when the record has none.
fn termination(view: &JobView) -> String {
    view.record
        .termination
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| view.record.state.name().to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::cgroup::CgroupStats;
    use crate::jobs::manager::{Sample, Usage};
    use crate::jobs::{JobRecord, JobSpec, Termination};

    fn view(state: JobState) -> JobView {
        JobView {
            spec: JobSpec {
                job_id: "j".into(),
                labels: BTreeMap::from([("deal".into(), "42".into())]),
                ..JobSpec::default()
            },
            record: JobRecord {
                state,
                created_at_millis: 900,
                started_at_millis: Some(1_000),
                image_digest: "sha256:ab".into(),
                ..JobRecord::default()
            },
            usage: Usage::default(),
            last_sample: None,
        }
    }

    fn bus_to_uuid(bus: &str) -> String {
        format!("GPU-{bus}")
    }

    #[test]
    fn a_chain_is_start_periodic_by_run_time_then_end() {
        let mut v = view(JobState::Running);
        assert_eq!(next_kind(&v, None, 600), Some(ReceiptKind::Start));
        let start = draft(&v, None, ReceiptKind::Start, 5_000, &bus_to_uuid);
        assert_eq!(
            (start.seq, start.from_unix_millis, start.to_unix_millis),
            (0, 1_000, 1_000)
        );
        assert_eq!(start.labels["deal"], "42");
        assert_eq!(start.usage, ReceiptUsage::default());
        let head = Head::of(&start);
        v.usage.duration_millis = 599;
        assert_eq!(next_kind(&v, Some(&head), 600), None);
        v.usage.duration_millis = 600;
        v.usage.cpu_nanos = 7;
        v.usage.gpu_millis.insert("0000:01:00.0".into(), 3);
        v.last_sample = Some(Arc::new(Sample {
            stats: CgroupStats {
                memory_peak_bytes: Some(1 << 20),
                ..CgroupStats::default()
            },
            scratch_used_bytes: Some(4096),
            ..Sample::default()
        }));
        assert_eq!(next_kind(&v, Some(&head), 600), Some(ReceiptKind::Periodic));
        let periodic = draft(&v, Some(&head), ReceiptKind::Periodic, 1_700, &bus_to_uuid);
        assert_eq!(
            (
                periodic.seq,
                periodic.from_unix_millis,
                periodic.to_unix_millis
            ),
            (1, 1_000, 1_700)
        );
        assert_eq!(periodic.usage.gpu_millis["GPU-0000:01:00.0"], 3);
        assert_eq!(periodic.usage.memory_peak_bytes, 1 << 20);
        assert_eq!(periodic.usage.disk_peak_bytes, 4096);
        let head = Head::of(&periodic);
        // The end reads lower figures (the cgroup is gone): the chain keeps the higher ones.
        let mut ended = view(JobState::Failed);
        ended.record.finished_at_millis = Some(1_650);
        ended.record.termination = Some(Termination::OomKilled);
        ended.usage.duration_millis = 650;
        assert_eq!(next_kind(&ended, Some(&head), 600), Some(ReceiptKind::End));
        let end = draft(&ended, Some(&head), ReceiptKind::End, 9_999, &bus_to_uuid);
        assert_eq!(end.termination.as_deref(), Some("oom_killed"));
        assert_eq!((end.from_unix_millis, end.to_unix_millis), (1_700, 1_700));
        assert_eq!(end.usage.cpu_nanos, 7);
        assert_eq!(end.usage.gpu_millis["GPU-0000:01:00.0"], 3);
        assert_eq!(end.usage.memory_peak_bytes, 1 << 20);
        assert_eq!(next_kind(&ended, Some(&Head::of(&end)), 600), None);
    }

    #[test]
    fn a_job_that_never_ran_gets_no_receipt_and_one_that_ended_unseen_gets_start_then_end() {
        let mut v = view(JobState::Failed);
        v.record.started_at_millis = None;
        assert_eq!(next_kind(&v, None, 600), None);
        v.record.started_at_millis = Some(1_000);
        assert_eq!(next_kind(&v, None, 600), Some(ReceiptKind::Start));
        let start = draft(&v, None, ReceiptKind::Start, 2_000, &bus_to_uuid);
        assert_eq!(
            next_kind(&v, Some(&Head::of(&start)), 600),
            Some(ReceiptKind::End)
        );
    }

    #[test]
    fn spec_hash_is_of_the_stored_spec_json() {
        let v = view(JobState::Running);
        let json = serde_json::to_string(&v.spec).unwrap();
        assert_eq!(
            spec_sha256(&v),
            hex::encode(Sha256::digest(json.as_bytes()))
        );
    }
}
