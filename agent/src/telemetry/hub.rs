//! The one telemetry sampler loop and its fan-out to subscribers.
//!
//! The sampler ticks at the shortest interval any subscriber asked for (never below the
//! configured minimum) and sleeps while nobody listens. Each sample is collected once, on a
//! blocking thread, and shared (`Arc`) with every subscriber that is due. Each subscriber has a
//! bounded queue: when it is full the oldest sample is dropped and counted, and the count is
//! handed out with the next sample the subscriber reads ([`Delivery::gap_count`]). Memory stays
//! bounded and a slow subscriber never delays the others. Dropping a [`Subscription`] removes it
//! at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Collect, HostSample};

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// `[telemetry] max_subscribers` are already subscribed.
    #[error("too many telemetry subscribers (limit {0})")]
    TooManySubscribers(usize),
    /// The hub is shutting down.
    #[error("telemetry is shutting down")]
    Closed,
}

/// One sample handed to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The sample (shared with the other subscribers).
    pub sample: Arc<HostSample>,
    /// Samples this subscriber lost since its previous delivery.
    pub gap_count: u64,
}

/// The sampler's shared state and subscriber registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TelemetryHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    min_interval: Duration,
    queue_depth: usize,
    max_subscribers: usize,
    registry: Mutex<Registry>,
    /// Wakes the sampler when the subscriber set changes or the hub closes.
    changed: Notify,
    closed: AtomicBool,
    /// The newest sample, for readers that want the current state rather than a stream (the
    /// metrics endpoint).
    latest: Mutex<Option<Arc<HostSample>>>,
    /// Samples dropped from full subscriber queues, all subscribers together.
    dropped: AtomicU64,
}

/// The sampler's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Subscribers now.
    pub subscribers: usize,
    /// Samples taken since start (the newest sample's sequence).
    pub samples: u64,
    /// Samples dropped from full subscriber queues since start (the sum of every `gap_count`
    /// handed out or still pending).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    subscribers: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    interval: Duration,
    next_due: Instant,
    queue: Arc<Queue>,
}

/// A subscriber's bounded queue.
#[derive(Debug)]
struct Queue {
    depth: usize,
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    samples: VecDeque<Arc<HostSample>>,
    gaps: u64,
    closed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across every critical section, so a poisoned lock (a
    // panic elsewhere) is still safe to use.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Queue {
    /// Queues a sample; returns whether the oldest one was dropped to make room.
    fn push(&self, sample: Arc<HostSample>) -> bool {
        let dropped = {
            let mut state = lock(&self.state);
            let full = state.samples.len() >= self.depth;
            if full {
                state.samples.pop_front();
                state.gaps += 1;
            }
            state.samples.push_back(sample);
            full
        };
        self.ready.notify_one();
        dropped
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }

    async fn recv(&self) -> Option<Delivery> {
        loop {
            {
                let mut state = lock(&self.state);
                if let Some(sample) = state.samples.pop_front() {
                    let gap_count = std::mem::take(&mut state.gaps);
                    return Some(Delivery { sample, gap_count });
                }
                if state.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// A live subscription; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    hub: Arc<Inner>,
    queue: Arc<Queue>,
}

impl Subscription {
    /// The next sample, waiting for it; `None` once the hub has shut down.
    pub async fn recv(&self) -> Option<Delivery> {
        self.queue.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.hub.registry).subscribers.remove(&self.id);
        self.hub.changed.notify_one();
    }
}

impl TelemetryHub {
    /// A hub whose subscribers may ask for intervals of at least `min_interval`, each with a
    /// queue of `queue_depth` samples, at most `max_subscribers` at once.
    pub fn new(min_interval: Duration, queue_depth: usize, max_subscribers: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                min_interval,
                queue_depth: queue_depth.max(1),
                max_subscribers,
                registry: Mutex::new(Registry::default()),
                changed: Notify::new(),
                closed: AtomicBool::new(false),
                latest: Mutex::new(None),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The newest sample, if one was taken. Reading it never triggers a collection.
    pub fn latest(&self) -> Option<Arc<HostSample>> {
        lock(&self.inner.latest).clone()
    }

    /// The sampler's counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            subscribers: self.subscriber_count(),
            samples: lock(&self.inner.latest)
                .as_ref()
                .map_or(0, |sample| sample.sequence),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }

    /// The shortest interval a subscriber may ask for.
    pub fn min_interval(&self) -> Duration {
        self.inner.min_interval
    }

    /// Subscribers now.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.inner.registry).subscribers.len()
    }

    /// Subscribes at `interval` (raised to the minimum). The first sample comes at the
    /// sampler's next tick.
    pub fn subscribe(&self, interval: Duration) -> Result<Subscription, HubError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(HubError::Closed);
        }
        let queue = Arc::new(Queue {
            depth: self.inner.queue_depth,
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        });
        let id = {
            let mut registry = lock(&self.inner.registry);
            if registry.subscribers.len() >= self.inner.max_subscribers {
                return Err(HubError::TooManySubscribers(self.inner.max_subscribers));
            }
            registry.next_id += 1;
            let id = registry.next_id;
            registry.subscribers.insert(
                id,
                Entry {
                    interval: interval.max(self.inner.min_interval),
                    next_due: Instant::now(),
                    queue: queue.clone(),
                },
            );
            id
        };
        self.inner.changed.notify_one();
        Ok(Subscription {
            id,
            hub: self.inner.clone(),
            queue,
        })
    }

    /// Ends every subscription (their `recv` returns `None` once drained) and stops the sampler.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for entry in lock(&self.inner.registry).subscribers.values() {
            entry.queue.close();
        }
        self.inner.changed.notify_one();
    }

    /// Runs the sampler loop until [`Self::close`]; spawn it once.
    pub async fn run(self, mut collector: impl Collect) {
        let inner = &self.inner;
        let mut sequence = 0u64;
        let mut next_tick: Option<Instant> = None;
        let mut last_tick: Option<Instant> = None;
        while !inner.closed.load(Ordering::Acquire) {
            let Some(period) = self.fastest_interval() else {
                // Nobody listens: sleep until someone subscribes.
                next_tick = None;
                inner.changed.notified().await;
                continue;
            };
            // A new, faster subscriber pulls the next tick closer.
            let due = match (next_tick, last_tick) {
                (Some(tick), Some(last)) => tick.min(last + period),
                (Some(tick), None) => tick,
                (None, _) => Instant::now(),
            };
            next_tick = Some(due);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = inner.changed.notified() => continue,
            }
            let result = tokio::task::spawn_blocking(move || {
                let sample = collector.collect();
                (collector, sample)
            })
            .await;
            let (returned, mut sample) = match result {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::error!(error = %err, "telemetry collector panicked; sampler stops");
                    self.close();
                    return;
                }
            };
            collector = returned;
            sequence += 1;
            sample.sequence = sequence;
            // Due times follow the tick schedule, not the (jittery) end of collection, so a
            // subscriber at the sampler's own interval gets every sample.
            self.deliver(Arc::new(sample), due, period);
            last_tick = Some(due);
            let now = Instant::now();
            // Missed ticks are skipped, never caught up in a burst.
            next_tick = Some(if due + period > now {
                due + period
            } else {
                now + period
            });
        }
    }

    fn fastest_interval(&self) -> Option<Duration> {
        lock(&self.inner.registry)
            .subscribers
            .values()
            .map(|entry| entry.interval)
            .min()
    }

    /// Hands `sample`, taken for the tick scheduled at `tick`, to every subscriber that is due:
    /// its interval has elapsed since the tick of its previous sample, within half a sampler
    /// period (a subscriber that joined during a collection still gets that sample).
    fn deliver(&self, sample: Arc<HostSample>, tick: Instant, period: Duration) {
        let slack = period / 2;
        *lock(&self.inner.latest) = Some(sample.clone());
        let mut registry = lock(&self.inner.registry);
        let mut dropped = 0;
        for entry in registry.subscribers.values_mut() {
            if entry.next_due <= tick + slack {
                dropped += u64::from(entry.queue.push(sample.clone()));
                entry.next_due = tick + entry.interval;
            }
        }
        self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Counts collections; samples carry nothing else.
    struct Counting(Arc<AtomicU64>);
    impl Collect for Counting {
        fn collect(&mut self) -> HostSample {
            self.0.fetch_add(1, Ordering::SeqCst);
            HostSample::default()
        }
    }

    fn hub() -> (TelemetryHub, Arc<AtomicU64>) {
        let hub = TelemetryHub::new(Duration::from_millis(100), 4, 10);
        let count = Arc::new(AtomicU64::new(0));
        tokio::spawn(hub.clone().run(Counting(count.clone())));
        (hub, count)
    }

    async fn settle() {
        // Let spawn_blocking round trips finish (they run on real threads).
        for _ in 0..50 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_collection_serves_all_subscribers() {
        let (hub, count) = hub();
        let a = hub.subscribe(Duration::from_secs(1)).unwrap();
        let b = hub.subscribe(Duration::from_secs(1)).unwrap();
        let (da, db) = tokio::join!(a.recv(), b.recv());
        let (da, db) = (da.unwrap(), db.unwrap());
        assert!(
            Arc::ptr_eq(&da.sample, &db.sample),
            "the same sample is shared"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        for _ in 0..3 {
            let (x, y) = tokio::join!(a.recv(), b.recv());
            assert_eq!(x.unwrap().sample.sequence, y.unwrap().sample.sequence);
        }
        assert_eq!(count.load(Ordering::SeqCst), 4, "one collection per tick");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_subscriber_gets_gap_count_and_fast_one_is_unaffected() {
        let (hub, _) = hub();
        let fast = hub.subscribe(Duration::from_millis(100)).unwrap();
        let slow = hub.subscribe(Duration::from_millis(100)).unwrap();
        let mut fast_seqs = Vec::new();
        for _ in 0..10 {
            let d = fast.recv().await.unwrap();
            assert_eq!(d.gap_count, 0);
            fast_seqs.push(d.sample.sequence);
        }
        assert_eq!(fast_seqs, (1..=10).collect::<Vec<_>>(), "no sample skipped");
        settle().await;
        // The slow one read nothing: its queue (depth 4) holds the newest 4 of 10.
        let stats = hub.stats();
        assert_eq!(
            (stats.subscribers, stats.samples, stats.dropped),
            (2, 10, 6)
        );
        assert_eq!(hub.latest().unwrap().sequence, 10);
        let first = slow.recv().await.unwrap();
        assert_eq!(first.gap_count, 6);
        assert_eq!(first.sample.sequence, 7);
        let next = slow.recv().await.unwrap();
        assert_eq!((next.gap_count, next.sample.sequence), (0, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn sampler_runs_at_the_fastest_interval_and_respects_each_interval() {
        let (hub, count) = hub();
        let slow = hub.subscribe(Duration::from_millis(300)).unwrap();
        let fast = hub.subscribe(Duration::from_millis(10)).unwrap(); // raised to 100 ms
        let start = Instant::now();
        let mut fast_times = Vec::new();
        for _ in 0..7 {
            fast.recv().await.unwrap();
            fast_times.push(start.elapsed());
        }
        assert_eq!(fast_times[6] - fast_times[5], Duration::from_millis(100));
        let mut slow_seqs = Vec::new();
        while let Some(d) = tokio::time::timeout(Duration::ZERO, slow.recv())
            .await
            .ok()
            .flatten()
        {
            slow_seqs.push(d.sample.sequence);
        }
        assert_eq!(slow_seqs, [1, 4, 7], "every third tick");
        assert_eq!(count.load(Ordering::SeqCst), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn gone_subscribers_are_removed_and_sampler_idles() {
        let (hub, count) = hub();
        let sub = hub.subscribe(Duration::from_millis(100)).unwrap();
        sub.recv().await.unwrap();
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
        settle().await;
        let before = count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert!(
            count.load(Ordering::SeqCst) <= before + 1,
            "no collection without subscribers"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_and_close() {
        let (hub, _) = hub();
        let subs: Vec<_> = (0..10)
            .map(|_| hub.subscribe(Duration::from_secs(1)).unwrap())
            .collect();
        assert_eq!(
            hub.subscribe(Duration::from_secs(1)).unwrap_err(),
            HubError::TooManySubscribers(10)
        );
        hub.close();
        for sub in &subs {
            assert!(sub.recv().await.is_none());
        }
        assert_eq!(
            hub.subscribe(Duration::from_secs(1)).unwrap_err(),
            HubError::Closed
        );
    }
}
