//! The issuer's counters, read by `/metrics` (cumulative since the agent started, except the
//! pending gauge).

use std::sync::atomic::{AtomicU64, Ordering};

/// Receipt outcomes.
#[derive(Debug, Default)]
pub struct ReceiptStats {
    signed: AtomicU64,
    sign_failures: AtomicU64,
    quotes: AtomicU64,
    quote_failures: AtomicU64,
    pending: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiptCounts {
    /// Receipts signed.
    pub signed: u64,
    /// Signing attempts that failed (the TPM unreachable or failing).
    pub sign_failures: u64,
    /// Receipt quotes taken.
    pub quotes: u64,
    /// Quote attempts that failed.
    pub quote_failures: u64,
    /// Receipts decided but not signed yet, as of the issuer's last look.
    pub pending: u64,
}

impl ReceiptStats {
    pub(super) fn signed(&self) {
        self.signed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sign_failed(&self) {
        self.sign_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn quoted(&self) {
        self.quotes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn quote_failed(&self) {
        self.quote_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_pending(&self, pending: usize) {
        self.pending.store(
            u64::try_from(pending).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The counters now.
    pub fn counts(&self) -> ReceiptCounts {
        ReceiptCounts {
            signed: self.signed.load(Ordering::Relaxed),
            sign_failures: self.sign_failures.load(Ordering::Relaxed),
            quotes: self.quotes.load(Ordering::Relaxed),
            quote_failures: self.quote_failures.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}
