//! A fake runtime for the job runner's unit tests (no root, no runc): [`FakeRuntime`] is both
//! the [`JobRuntime`] and the [`Supervisor`]. A "shim" is a thread of the test process that
//! holds a simulated container until it is signalled (SIGTERM ends it unless the test said it
//! ignores SIGTERM; SIGKILL always does) or the test ends it ([`FakeRuntime::exit`]), then
//! writes `exit.json` like the real shim. [`FakeRuntime::crash`] ends a shim without a record.
//! The containers live in the fake, not in a manager, so a second manager on the same state
//! dir and fake sees what an agent restarted on the same host would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::records::lock;
use super::runtime::{ContainerState, JobRuntime};
use super::shim::{self, ExitRecord, ShimArgs};
use super::supervisor::{Launched, Supervisor};
use super::JobError;

/// How a simulated container ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Exit code, recorded in `exit.json`.
    Exit(i32),
    /// The shim dies without a record.
    Crash,
}

#[derive(Debug, Default)]
struct Container {
    running: bool,
    shim_alive: bool,
    ignore_term: bool,
    end: Option<End>,
    signals: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Ids whose next start fails (the runtime reports an error, the container never runs).
    fail_start: Vec<String>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
    changed: Condvar,
}

impl FakeRuntime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Container) -> R) -> Option<R> {
        let r = lock(&self.state).containers.get_mut(id).map(f);
        self.changed.notify_all();
        r
    }

    /// The container ends on its own with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        self.with(id, |c| c.end = Some(End::Exit(code)));
    }

    /// The shim dies without recording an exit.
    pub fn crash(&self, id: &str) {
        self.with(id, |c| c.end = Some(End::Crash));
    }

    /// The container ignores SIGTERM (only SIGKILL ends it).
    pub fn ignore_term(&self, id: &str) {
        self.with(id, |c| c.ignore_term = true);
    }

    /// The next start of `id` fails.
    pub fn fail_start(&self, id: &str) {
        lock(&self.state).fail_start.push(id.to_owned());
    }

    /// The signals container `id` got.
    pub fn signals(&self, id: &str) -> Vec<String> {
        lock(&self.state)
            .containers
            .get(id)
            .map(|c| c.signals.clone())
            .unwrap_or_default()
    }

    /// Whether `id` runs.
    pub fn running(&self, id: &str) -> bool {
        lock(&self.state)
            .containers
            .get(id)
            .is_some_and(|c| c.running)
    }

    /// Adds a running container no job owns (for recovery's orphan removal).
    pub fn add_orphan(&self, id: &str) {
        lock(&self.state).containers.insert(
            id.to_owned(),
            Container {
                running: true,
                ..Container::default()
            },
        );
    }

    /// The shim thread: waits for the container's end, then records it.
    fn supervise(self: Arc<Self>, id: String, dir: PathBuf, on_exit: Box<dyn FnOnce() + Send>) {
        let end = {
            let mut state = lock(&self.state);
            loop {
                if let Some(end) = state.containers.get(&id).and_then(|c| c.end) {
                    break end;
                }
                state = self
                    .changed
                    .wait_timeout(state, Duration::from_secs(1))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        };
        // Like the real shim: the container is gone before the exit is recorded (a stop that
        // sees `exit.json` finds nothing running), and the shim lives until it is recorded.
        if let Some(c) = lock(&self.state).containers.get_mut(&id) {
            c.running = false;
        }
        if let End::Exit(code) = end {
            let record = ExitRecord {
                started: true,
                exit_code: Some(code),
                finished_at_millis: shim::now_millis(),
                cpu_usage_nanos: Some(1_000),
                ..ExitRecord::default()
            };
            let json = serde_json::to_vec(&record).unwrap_or_default();
            if let Err(err) = shim::write_atomic(&dir.join(shim::EXIT_FILE), &json) {
                tracing::error!(error = %err, "fake shim: cannot write exit.json");
            }
        }
        lock(&self.state).containers.remove(&id);
        self.changed.notify_all();
        on_exit();
    }
}

impl JobRuntime for FakeRuntime {
    fn run_command(&self, _id: &str, _bundle: &Path, _pid_file: &Path) -> Command {
        Command::new("true")
    }

    fn state(&self, id: &str) -> Result<Option<ContainerState>, JobError> {
        Ok(lock(&self.state)
            .containers
            .get(id)
            .map(|c| ContainerState {
                status: if c.running { "running" } else { "stopped" }.to_owned(),
                pid: 1,
            }))
    }

    fn kill(&self, id: &str, signal: &str) -> Result<(), JobError> {
        self.with(id, |c| {
            c.signals.push(signal.to_owned());
            match signal {
                "KILL" => {
                    c.end.get_or_insert(End::Exit(137));
                }
                "TERM" if !c.ignore_term => {
                    c.end.get_or_insert(End::Exit(143));
                }
                _ => {}
            }
        });
        Ok(())
    }

    fn delete(&self, id: &str, _force: bool) -> Result<(), JobError> {
        let mut state = lock(&self.state);
        // A container whose shim still supervises it is killed; the shim then records it.
        match state.containers.get_mut(id) {
            Some(c) if c.shim_alive => {
                c.end.get_or_insert(End::Exit(137));
            }
            Some(_) => {
                state.containers.remove(id);
            }
            None => {}
        }
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, JobError> {
        Ok(lock(&self.state).containers.keys().cloned().collect())
    }

    fn started(&self, id: &str, _pid: i32) -> Option<bool> {
        Some(self.running(id))
    }

    fn init_pid(&self, id: &str) -> Option<i32> {
        self.running(id).then_some(1)
    }
}

/// The fake's supervisor half needs the `Arc` (its shims are threads holding it).
#[derive(Debug, Clone)]
pub struct FakeSupervisor(pub Arc<FakeRuntime>);

impl Supervisor for FakeSupervisor {
    fn launch(
        &self,
        args: &ShimArgs,
        on_exit: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Launched> {
        let fake = &self.0;
        let fails = {
            let mut state = lock(&fake.state);
            let fails = state.fail_start.contains(&args.id);
            state.fail_start.retain(|id| *id != args.id);
            state.containers.insert(
                args.id.clone(),
                Container {
                    running: !fails,
                    shim_alive: !fails,
                    ..Container::default()
                },
            );
            fails
        };
        if fails {
            lock(&fake.state).containers.remove(&args.id);
            let record = ExitRecord {
                started: false,
                finished_at_millis: shim::now_millis(),
                error: Some("fake: the runtime refused the bundle".to_owned()),
                ..ExitRecord::default()
            };
            let json = serde_json::to_vec(&record).unwrap_or_default();
            shim::write_atomic(&args.job_dir.join(shim::EXIT_FILE), &json)?;
            on_exit();
            return Ok(Launched::default());
        }
        let (fake, id, dir) = (fake.clone(), args.id.clone(), args.job_dir.clone());
        std::thread::spawn(move || fake.supervise(id, dir, on_exit));
        Ok(Launched::default())
    }

    fn alive(&self, id: &str, _job_dir: &Path) -> bool {
        lock(&self.0.state)
            .containers
            .get(id)
            .is_some_and(|c| c.shim_alive)
    }

    fn pid(&self, _id: &str, _job_dir: &Path) -> Option<i32> {
        None
    }

    fn kill(&self, id: &str, _job_dir: &Path) {
        self.0.crash(id);
    }
}
