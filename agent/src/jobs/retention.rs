//! Retention (`impl JobManager`, at the end of every telemetry tick): a job that ended
//! `[jobs] retention_millis` ago is forgotten, and so are the oldest ended jobs past
//! `[jobs] max_retained_jobs` (so memory, the database and ListJobs stay bounded however many
//! short jobs a market runs): its job dir (logs, bundle) first, then its record, transitions
//! and usage counters (one transaction), then the job in memory. Until then GetJob, JobLogs
//! and StartJob's idempotency still know it; afterwards its id may be started again.

use super::manager::JobManager;
use super::scratch;

impl JobManager {
    /// Forgets every job that ended at least `[jobs] retention_millis` before `now_ms` (0 =
    /// never), and the oldest ended jobs (by end time) past `[jobs] max_retained_jobs`; see
    /// the module doc. A record that cannot be deleted is kept, and tried again at the next
    /// tick.
    pub fn forget_expired(&self, now_ms: u64) {
        let retention = self.config.retention_millis;
        let max_kept = usize::try_from(self.config.max_retained_jobs).unwrap_or(usize::MAX);
        let end = |r: &super::model::JobRecord| r.finished_at_millis.unwrap_or(r.created_at_millis);
        // Most ticks have nothing to forget: find that out without copying anything.
        let nothing = self.records.read(|t| {
            let mut ended = t.jobs.values().filter(|e| !e.view.record.state.is_active());
            let (count, due) = ended.by_ref().fold((0, false), |(n, due), e| {
                let expired =
                    retention > 0 && now_ms.saturating_sub(end(&e.view.record)) >= retention;
                (n + 1, due || expired)
            });
            count <= max_kept && !due
        });
        if nothing {
            return;
        }
        // Ended jobs, oldest end first (creation order breaks ties).
        let mut ended: Vec<(u64, String)> = self.records.read(|t| {
            t.in_order()
                .filter(|e| !e.view.record.state.is_active())
                .map(|e| (end(&e.view.record), e.view.spec.job_id.clone()))
                .collect()
        });
        ended.sort_by_key(|(at, _)| *at);
        let over = ended.len().saturating_sub(max_kept);
        let expired: Vec<String> = ended
            .into_iter()
            .enumerate()
            .filter(|(i, (at, _))| {
                *i < over || (retention > 0 && now_ms.saturating_sub(*at) >= retention)
            })
            .map(|(_, (_, id))| id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            let dir = self.job_dir(id);
            // Gone when the job ended, unless its unmount failed then.
            if let Err(err) = scratch::remove(&dir) {
                tracing::warn!(job = %id, error = %err, "cannot remove the scratch space");
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                // The record goes anyway: a dir left behind is replaced if the id comes back.
                Err(err) => {
                    tracing::warn!(job = %id, error = %err, "cannot remove {}", dir.display())
                }
            }
        }
        let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
        if let Err(err) = self.records.delete(&ids) {
            tracing::warn!(error = %err, jobs = expired.len(), "cannot delete ended jobs past their retention; next tick tries again");
            return;
        }
        tracing::info!(
            jobs = ids.len(),
            over_max_retained = over,
            retention_millis = retention,
            "forgot ended jobs past their retention or past max_retained_jobs"
        );
    }
}
