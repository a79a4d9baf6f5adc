//! [`Receipts`]: the issuer. One thread of its own follows the job runner's state changes
//! ([`JobManager::watch_changes`], drained every [`TICK`]) and, once a second, the running
//! jobs' run time; it commits each receipt a job needs as a draft (its figures fixed then), signs
//! the drafts in issue order with the TPM identity key, and quotes the signed receipts every
//! `[receipts] quote_interval_secs`. StartJob and the telemetry tick never wait for any of it:
//! the job runner only sends on a broadcast channel.
//!
//! When the TPM cannot be reached, drafts stay in the database and signing is retried with a
//! backoff (1 s doubling to [`MAX_BACKOFF`]); the first failure of a streak is logged as a
//! warning naming the cause, the recovery at info. Nothing is dropped: a restarted agent signs
//! the drafts it finds and issues the receipts its jobs missed meanwhile (a start, an end).
//!
//! Locks: `signing` (held while drafts are signed), `store` (the issuer's own connection to
//! the state database, also taken by [`Receipts::bundle`] and [`Receipts::watch`]), then
//! `heads`. TPM calls happen under
//! `store`, so a sign and a quote never race for the chain ends.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use fog_tpm::receipt::{
    quote_qualifying_data, signing_digest, ReceiptBody, ReceiptKind, SignedReceipt, GENESIS,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use super::draft::{self, Head};
use super::{ReceiptError, ReceiptKeys, ReceiptStats};
use crate::config::ReceiptsConfig;
use crate::inventory::error_chain;
use crate::jobs::{JobError, JobManager, JobView};
use crate::state::{ReceiptQuoteRow, ReceiptRow, StateStore};

/// How often the issuer looks at the job runner's changes and its drafts.
pub const TICK: Duration = Duration::from_millis(200);
/// How often running jobs are checked for a due periodic receipt.
const PERIODIC_CHECK: Duration = Duration::from_secs(1);
/// How often every job is looked at again (a draft whose commit failed is retried).
const FULL_CHECK: Duration = Duration::from_secs(30);
/// Longest wait between two attempts to reach the TPM.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Signed receipts buffered per watcher.
const ISSUED_QUEUE: usize = 1024;

/// A receipt as it is signed (what WatchReceipts streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The job.
    pub job_id: String,
    /// Its position in the job's chain.
    pub seq: u64,
    /// Start, periodic or end.
    pub kind: ReceiptKind,
    /// The signed receipt.
    pub receipt: SignedReceipt,
}

/// A receiver of every receipt as it is signed.
pub type IssuedReceiver = broadcast::Receiver<Arc<Issued>>;

/// The host id and the identity key's name (hex), read from the TPM once.
#[derive(Debug, Clone)]
pub(super) struct Signer {
    pub(super) host_id: String,
    key: String,
}

/// Retries of a failing TPM operation.
#[derive(Debug, Default)]
struct Backoff {
    failing_since: Option<Instant>,
    next_try: Option<Instant>,
    wait: Duration,
}

impl Backoff {
    fn due(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|t| now >= t)
    }

    /// Records a failure; true for the first of a streak.
    fn failed(&mut self, now: Instant) -> bool {
        self.wait = (self.wait * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
        self.next_try = Some(now + self.wait);
        self.failing_since.replace(now).is_none()
    }

    /// Records a success; true when it ends a streak of failures.
    fn succeeded(&mut self) -> bool {
        self.next_try = None;
        self.wait = Duration::ZERO;
        self.failing_since.take().is_some()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn kind_name(kind: ReceiptKind) -> &'static str {
    match kind {
        ReceiptKind::Start => "start",
        ReceiptKind::Periodic => "periodic",
        ReceiptKind::End => "end",
    }
}

fn kind_from_name(name: &str) -> ReceiptKind {
    match name {
        "start" => ReceiptKind::Start,
        "end" => ReceiptKind::End,
        _ => ReceiptKind::Periodic,
    }
}

pub(super) fn stored(what: impl std::fmt::Display) -> ReceiptError {
    ReceiptError::Stored(what.to_string())
}

fn digest_bytes(hex_digest: &str) -> Result<[u8; 32], ReceiptError> {
    hex::decode(hex_digest)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| stored(format!("bad receipt digest {hex_digest:?}")))
}

/// The usage receipts of every job.
pub struct Receipts {
    config: ReceiptsConfig,
    jobs: Arc<JobManager>,
    pub(super) keys: Arc<dyn ReceiptKeys>,
    pub(super) store: Mutex<StateStore>,
    /// Held while drafts are signed (by the thread or a GetReceipts).
    signing: Mutex<()>,
    /// The newest receipt (signed or draft) of each job's chain.
    heads: Mutex<HashMap<String, Head>>,
    signer: Mutex<Option<Signer>>,
    /// The AK and EK evidence of bundles, read from the TPM once.
    pub(super) tpm_evidence: Mutex<Option<fog_tpm::receipt::BundleTpm>>,
    issued: broadcast::Sender<Arc<Issued>>,
    pub(super) stats: Arc<ReceiptStats>,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Receipts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipts")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Receipts {
    /// The issuer over the jobs of `jobs`, its database in `state_dir` (the jobs' own), the
    /// TPM behind `keys`. Loads every chain's newest receipt; [`Self::spawn`] starts issuing.
    pub fn open(
        config: ReceiptsConfig,
        jobs: Arc<JobManager>,
        keys: Arc<dyn ReceiptKeys>,
        state_dir: &std::path::Path,
    ) -> Result<Arc<Self>, ReceiptError> {
        let store = StateStore::open(state_dir)?;
        let mut heads = HashMap::new();
        for (job, _, doc) in store.receipt_heads()? {
            let body: ReceiptBody = serde_json::from_str(&doc).map_err(stored)?;
            heads.insert(job, Head::of(&body));
        }
        Ok(Arc::new(Self {
            config,
            jobs,
            keys,
            store: Mutex::new(store),
            signing: Mutex::new(()),
            heads: Mutex::new(heads),
            signer: Mutex::new(None),
            tpm_evidence: Mutex::new(None),
            issued: broadcast::channel(ISSUED_QUEUE).0,
            stats: Arc::new(ReceiptStats::default()),
            stop: Mutex::new(None),
            thread: Mutex::new(None),
        }))
    }

    /// The issuer's counters.
    pub fn stats(&self) -> Arc<ReceiptStats> {
        self.stats.clone()
    }

    /// Starts the issuer's thread.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel();
        *lock(&self.stop) = Some(tx);
        let changes = self.jobs.watch_changes();
        let weak = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("receipts".into())
            .spawn(move || Self::run(&weak, &rx, changes))?;
        *lock(&self.thread) = Some(thread);
        Ok(())
    }

    /// Stops the issuer's thread and waits for it (at most one TPM call it is in; blocking):
    /// drafts stay in the database for the next run.
    pub fn shutdown(&self) {
        lock(&self.stop).take();
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("the receipts thread panicked");
            }
        }
    }

    /// The issuer's loop. It holds the issuer only while it works: a daemon dropped without
    /// [`Self::shutdown`] (tests) ends it too.
    fn run(
        weak: &Weak<Self>,
        stop: &mpsc::Receiver<()>,
        mut changes: broadcast::Receiver<Arc<JobView>>,
    ) {
        let Some(me) = weak.upgrade() else {
            return;
        };
        let interval = Duration::from_secs(me.config.quote_interval_secs);
        me.reconcile_all(false);
        drop(me);
        let (mut signing, mut quoting) = (Backoff::default(), Backoff::default());
        let mut last_quote = Instant::now();
        let (mut last_periodic, mut last_full) = (Instant::now(), Instant::now());
        loop {
            match stop.recv_timeout(TICK) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Stopped (the sender is dropped).
                _ => return,
            }
            let Some(me) = weak.upgrade() else {
                return;
            };
            loop {
                match changes.try_recv() {
                    Ok(view) => me.reconcile(&view.spec.job_id),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => me.reconcile_all(false),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now.duration_since(last_full) >= FULL_CHECK {
                me.reconcile_all(false);
                (last_full, last_periodic) = (now, now);
            } else if now.duration_since(last_periodic) >= PERIODIC_CHECK {
                me.reconcile_all(true);
                last_periodic = now;
            }
            if signing.due(now) {
                match me.sign_pending() {
                    Ok(_) => {
                        if signing.succeeded() {
                            tracing::info!(
                                "the TPM answers again: pending usage receipts are signed"
                            );
                        }
                    }
                    Err(err) => {
                        me.stats.sign_failed();
                        if signing.failed(now) {
                            tracing::warn!(error = %error_chain(&err), "usage receipts stay pending: they cannot be signed with the TPM identity key now (retried, nothing is lost)");
                        }
                    }
                }
            }
            if now.duration_since(last_quote) >= interval && quoting.due(now) {
                last_quote = now;
                match me.quote_unquoted() {
                    Ok(_) => {
                        if quoting.succeeded() {
                            tracing::info!("usage receipts are quoted again");
                        }
                    }
                    Err(err) => {
                        me.stats.quote_failed();
                        if quoting.failed(now) {
                            tracing::warn!(error = %error_chain(&err), "usage receipts cannot be quoted by the AK now (retried)");
                        }
                    }
                }
            }
        }
    }

    /// Looks at every job (`running_only`: the active ones).
    fn reconcile_all(&self, running_only: bool) {
        for view in self.jobs.list(running_only) {
            self.reconcile_view(&view);
        }
    }

    /// Drafts what job `id` needs now.
    fn reconcile(&self, id: &str) {
        match self.jobs.get(id) {
            Ok(view) => self.reconcile_view(&view),
            Err(JobError::NotFound(_)) => {
                lock(&self.heads).remove(id);
            }
            Err(err) => tracing::debug!(job = %id, error = %err, "job not readable for receipts"),
        }
    }

    fn reconcile_view(&self, view: &JobView) {
        let id = &view.spec.job_id;
        let interval = self.config.interval_secs.saturating_mul(1000);
        let gpu_key = |bus: &str| self.jobs.gpu_uuid(bus).unwrap_or_else(|| bus.to_owned());
        let mut store = lock(&self.store);
        loop {
            let head = lock(&self.heads).get(id).cloned();
            let Some(kind) = draft::next_kind(view, head.as_ref(), interval) else {
                return;
            };
            let body = draft::draft(view, head.as_ref(), kind, now_millis(), &gpu_key);
            let json = match serde_json::to_string(&body) {
                Ok(json) => json,
                Err(err) => {
                    tracing::error!(job = %id, error = %err, "cannot serialize a receipt draft");
                    return;
                }
            };
            if let Err(err) = store.receipt_draft_add(id, body.seq, &json) {
                // Tried again at the next look at this job.
                tracing::warn!(job = %id, seq = body.seq, error = %error_chain(&err), "cannot store a usage receipt draft");
                return;
            }
            tracing::debug!(job = %id, seq = body.seq, kind = kind_name(kind), "usage receipt drafted");
            lock(&self.heads).insert(id.clone(), Head::of(&body));
        }
    }

    /// The host id and key name, read from the TPM the first time.
    pub(super) fn signer(&self) -> Result<Signer, ReceiptError> {
        let mut cached = lock(&self.signer);
        if let Some(signer) = cached.as_ref() {
            return Ok(signer.clone());
        }
        let signer = Signer {
            host_id: self.keys.host_id()?,
            key: hex::encode(self.keys.key_name()?),
        };
        *cached = Some(signer.clone());
        Ok(signer)
    }

    /// Signs every draft in issue order, up to the first failure; returns how many.
    pub fn sign_pending(&self) -> Result<usize, ReceiptError> {
        let _signing = lock(&self.signing);
        let drafts = lock(&self.store).receipt_drafts()?;
        self.stats.set_pending(drafts.len());
        if drafts.is_empty() {
            return Ok(0);
        }
        let signer = self.signer()?;
        let mut done = 0;
        for d in &drafts {
            let mut store = lock(&self.store);
            let mut body: ReceiptBody = serde_json::from_str(&d.draft_json).map_err(stored)?;
            let prev = store.receipt_last(&d.job_id)?;
            let expected = prev.as_ref().map_or(0, |p| p.seq + 1);
            if d.seq != expected {
                return Err(stored(format!(
                    "job {:?}: draft {} follows receipt {} (a gap)",
                    d.job_id,
                    d.seq,
                    expected.wrapping_sub(1)
                )));
            }
            body.host_id = signer.host_id.clone();
            body.key = signer.key.clone();
            body.prev = prev.map_or_else(|| GENESIS.to_owned(), |p| p.digest);
            let bytes = body.to_bytes();
            let signature = self.keys.sign_digest(&signing_digest(&bytes))?;
            let receipt = SignedReceipt {
                body: bytes,
                signature,
            };
            let row = ReceiptRow {
                id: 0,
                job_id: d.job_id.clone(),
                seq: d.seq,
                kind: kind_name(body.kind).to_owned(),
                body: receipt.body.clone(),
                signature: receipt.signature.clone(),
                digest: hex::encode(receipt.digest()),
                quote_seq: None,
            };
            store.receipt_sign(d.id, &row)?;
            drop(store);
            done += 1;
            self.stats.signed();
            self.stats.set_pending(drafts.len() - done);
            tracing::debug!(job = %d.job_id, seq = d.seq, kind = %row.kind, "usage receipt signed");
            // No watchers is fine.
            let _ = self.issued.send(Arc::new(Issued {
                job_id: d.job_id.clone(),
                seq: d.seq,
                kind: body.kind,
                receipt,
            }));
        }
        Ok(done)
    }

    /// Quotes every signed receipt no quote covers yet (none: no TPM call); returns whether
    /// it quoted.
    pub fn quote_unquoted(&self) -> Result<bool, ReceiptError> {
        let mut store = lock(&self.store);
        Self::quote_locked(&mut store, self.keys.as_ref()).inspect(|quoted| {
            if *quoted {
                self.stats.quoted();
            }
        })
    }

    pub(super) fn quote_locked(
        store: &mut StateStore,
        keys: &dyn ReceiptKeys,
    ) -> Result<bool, ReceiptError> {
        let unquoted = store.receipts_unquoted()?;
        if unquoted.is_empty() {
            return Ok(false);
        }
        let (seq, prev) = match store.receipt_quote_last()? {
            Some(last) => (last.seq + 1, Sha256::digest(&last.attest).into()),
            None => (0, [0u8; 32]),
        };
        let digests = unquoted
            .iter()
            .map(|(_, d)| digest_bytes(d))
            .collect::<Result<Vec<_>, _>>()?;
        let (attest, signature) = keys.quote(&quote_qualifying_data(seq, &prev, &digests))?;
        let listed: Vec<&str> = unquoted.iter().map(|(_, d)| d.as_str()).collect();
        let row = ReceiptQuoteRow {
            seq,
            prev: hex::encode(prev),
            receipts_json: serde_json::to_string(&listed).map_err(stored)?,
            attest,
            signature,
        };
        let ids: Vec<i64> = unquoted.iter().map(|(id, _)| *id).collect();
        store.receipt_quote_add(&row, &ids)?;
        tracing::debug!(seq, receipts = ids.len(), "usage receipts quoted");
        Ok(true)
    }

    /// The job's receipts signed so far, and a receiver of every receipt signed from now on
    /// (NotFound for an unknown job); None instead of the receiver when no receipt will come
    /// (a job that ended without ever running).
    pub fn watch(
        &self,
        job_id: &str,
    ) -> Result<(Vec<Issued>, Option<IssuedReceiver>), ReceiptError> {
        let view = self.view(job_id)?;
        let never_ran = !view.record.state.is_active() && view.record.started_at_millis.is_none();
        // Subscribed before the read: a receipt signed in between is in both (callers skip
        // by seq), never in neither.
        let rx = self.issued.subscribe();
        let rows = lock(&self.store).receipts_of(job_id)?;
        let so_far = rows
            .into_iter()
            .map(|r| Issued {
                job_id: r.job_id,
                seq: r.seq,
                kind: kind_from_name(&r.kind),
                receipt: SignedReceipt {
                    body: r.body,
                    signature: r.signature,
                },
            })
            .collect();
        Ok((so_far, (!never_ran).then_some(rx)))
    }

    pub(super) fn known(&self, job_id: &str) -> Result<(), ReceiptError> {
        self.view(job_id).map(|_| ())
    }

    fn view(&self, job_id: &str) -> Result<JobView, ReceiptError> {
        match self.jobs.get(job_id) {
            Ok(view) => Ok(view),
            Err(JobError::NotFound(_)) => Err(ReceiptError::NotFound(job_id.to_owned())),
            Err(err) => Err(stored(err)),
        }
    }
}
