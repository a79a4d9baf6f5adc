//! Recovery after a restart (`impl JobManager`, run by [`JobManager::open`]): every job not
//! ended in the store is checked against what is left on the host.
//!
//! - an `exit.json` in its dir finishes it;
//! - a live shim keeps it: `running` stays; `stopping` gets its SIGTERM again and the sampler
//!   its SIGKILL after the grace (no thread per job); `creating` is settled by the same
//!   event-driven wait a start uses (bounded by the start timeout);
//! - otherwise its container is removed and the job recorded as lost (or start-failed when it
//!   never started).
//!
//! Then containers under the runtime root that no active job owns are removed, and so are job
//! networks (namespaces, CNI attachments) no active job owns: no untracked container or
//! network survives a restart. Active jobs keep their host ports.

use super::manager::JobManager;
use super::model::{JobState, Termination};
use super::shim::{self, ExitRecord};
use super::wait::Waiter;
use super::JobError;

/// What recovery does with one active job.
enum Found {
    /// It ended: finish it from its exit record, or as lost / start-failed.
    Ended(Option<ExitRecord>, Termination, &'static str),
    /// `creating` with a live shim: wait for its outcome.
    Creating,
    /// `stopping` with a live shim: stop it again.
    Stopping,
    /// `running` with a live shim.
    Running,
}

impl JobManager {
    pub(super) fn recover(&self) -> Result<(), JobError> {
        let active: Vec<(String, JobState)> = self.records.read(|t| {
            t.in_order()
                .filter(|e| e.view.record.state.is_active())
                .map(|e| (e.view.spec.job_id.clone(), e.view.record.state))
                .collect()
        });
        for (id, state) in &active {
            let dir = self.job_dir(id);
            let found = if let Some(exit) = shim::read_exit(&dir) {
                Found::Ended(Some(exit), Termination::Exited, "")
            } else if self.supervisor.alive(id, &dir) {
                tracing::info!(job = %id, state = state.name(), "job found again after restart");
                match state {
                    JobState::Creating => Found::Creating,
                    JobState::Stopping => Found::Stopping,
                    _ => Found::Running,
                }
            } else if *state == JobState::Creating {
                Found::Ended(
                    None,
                    Termination::StartFailed,
                    "the agent stopped before the container started",
                )
            } else {
                Found::Ended(
                    None,
                    Termination::Lost,
                    "the job's supervisor ended without recording an exit status",
                )
            };
            match found {
                Found::Ended(exit, why, message) => {
                    if exit.is_none() {
                        self.remove_container(id);
                    }
                    self.finish(id, exit, why, message)?;
                }
                Found::Creating => self.settle_creating(id)?,
                Found::Stopping => self.terminate_later(id),
                Found::Running => {}
            }
        }
        self.remove_orphans();
        self.reconcile_networks();
        Ok(())
    }

    /// Removes the containers no active job owns.
    fn remove_orphans(&self) {
        match self.runtime.list() {
            Ok(ids) => {
                let orphans: Vec<String> = self.records.read(|t| {
                    ids.into_iter()
                        .filter(|id| {
                            !t.jobs
                                .get(id)
                                .is_some_and(|e| e.view.record.state.is_active())
                        })
                        .collect()
                });
                for id in orphans {
                    tracing::warn!(container = %id, "removing a container no active job owns");
                    self.remove_container(&id);
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot list the runtime's containers"),
        }
    }

    /// A job found in `creating` with a live shim after a restart: waits (bounded) for the
    /// shim's outcome and records it; on timeout the shim and container are removed.
    fn settle_creating(&self, id: &str) -> Result<(), JobError> {
        let dir = self.job_dir(id);
        match self.wait_started(id, &dir, Waiter::new()) {
            Ok(None) => {
                self.mark_running(id, "container running (found after an agent restart)")?;
            }
            Ok(Some(exit)) => {
                self.finish(id, Some(exit), Termination::Exited, "")?;
            }
            Err(err) => {
                tracing::warn!(job = %id, error = %err, "job did not start after a restart");
                self.supervisor.kill(id, &dir);
                self.remove_container(id);
                self.finish(
                    id,
                    None,
                    Termination::StartFailed,
                    "the container did not start after an agent restart",
                )?;
            }
        }
        Ok(())
    }
}
