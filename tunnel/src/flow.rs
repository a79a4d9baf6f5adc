//! Flow-control accounting: what a stream may still receive ([`Credit`]) and what it may still
//! send ([`SendWindow`], revision 1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes a stream may still receive before its handler consumes some. The read loop takes
/// from it (never waiting: a frame beyond it fails the stream); the handler's side gives back
/// what it consumed.
#[derive(Debug)]
pub struct Credit(AtomicU64);

impl Credit {
    /// Credit of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self(AtomicU64::new(bytes))
    }

    /// Takes `bytes` if that much is left.
    pub fn take(&self, bytes: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    pub fn give(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }

    /// What is left.
    pub fn left(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The market's receive window for one stream: response data waits for it (revision 1).
#[derive(Debug)]
pub struct SendWindow {
    bytes: AtomicU64,
    grown: Notify,
}

/// The market granted no window for the whole idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTimeout;

impl SendWindow {
    /// A window of `initial` bytes.
    pub fn new(initial: u32) -> Self {
        Self {
            bytes: AtomicU64::new(u64::from(initial)),
            grown: Notify::new(),
        }
    }

    /// The market consumed `bytes`.
    pub fn grow(&self, bytes: u32) {
        if bytes == 0 {
            return;
        }
        self.bytes.fetch_add(u64::from(bytes), Ordering::AcqRel);
        // One waiter (the stream's sender); a permit is kept if it is not waiting yet.
        self.grown.notify_one();
    }

    /// Takes between 1 and `want` bytes of window, waiting for the market to grant some;
    /// `want == 0` takes nothing and never waits. Fails after `idle` without any window.
    pub async fn acquire(&self, want: usize, idle: Duration) -> Result<usize, WindowTimeout> {
        if want == 0 {
            return Ok(0);
        }
        loop {
            let taken = self
                .bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    (left > 0).then(|| left - left.min(want as u64))
                });
            if let Ok(left) = taken {
                return Ok(left.min(want as u64) as usize);
            }
            if tokio::time::timeout(idle, self.grown.notified())
                .await
                .is_err()
            {
                return Err(WindowTimeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_taken_only_when_enough_is_left() {
        let credit = Credit::new(10);
        assert!(credit.take(6));
        assert!(!credit.take(5));
        credit.give(1);
        assert!(credit.take(5));
        assert_eq!(credit.left(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_send_window_waits_for_grants_and_times_out_without() {
        let window = std::sync::Arc::new(SendWindow::new(5));
        assert_eq!(window.acquire(3, Duration::from_secs(1)).await, Ok(3));
        assert_eq!(window.acquire(16384, Duration::from_secs(1)).await, Ok(2));
        let waiting = tokio::spawn({
            let window = window.clone();
            async move { window.acquire(100, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        window.grow(40);
        assert_eq!(waiting.await.unwrap(), Ok(40));
        assert_eq!(
            window.acquire(1, Duration::from_secs(2)).await,
            Err(WindowTimeout)
        );
        assert_eq!(window.acquire(0, Duration::from_secs(2)).await, Ok(0));
    }
}
