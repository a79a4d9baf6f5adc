//! Receipt verification throughput (receipts per second on one core): `verify_bundle` over a
//! bundle of 1,000 receipts of one job (start, periodic, end; one quote per 100 receipts) made on
//! swtpm. The TPM's time per receipt is `benches/receipt-sign.sh`.
//!
//! `cargo bench -p fog-tpm --features test-util --bench receipts`

use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fog_tpm::receipt::{ReceiptBundle, ReceiptKind};
use fog_tpm::receipt_verify::{verify_bundle_at, ReceiptVerifyOptions};
use fog_tpm::store::Store;
use fog_tpm::testing::receipts::{BuildError, JobChain, ReceiptHost};
use fog_tpm::testing::Swtpm;

/// Receipts in the bundle.
const RECEIPTS: usize = 1000;
/// Receipts per quote.
const PER_QUOTE: usize = 100;

struct Setup {
    bundle: Vec<u8>,
    opts: ReceiptVerifyOptions,
    state: fog_tpm::store::VerifierState,
}

fn setup(swtpm: &Swtpm) -> Result<Setup, BuildError> {
    let mut host = ReceiptHost::new(fog_tpm::device::Tpm::open(&swtpm.tcti())?, "bench-host")?;
    let anchors = swtpm.trust_anchors_pem()?;
    let auditor = tempfile::tempdir()?;
    let store = Store::open(auditor.path())?;
    host.enroll(&store, &anchors, SystemTime::now())?;
    let mut job = JobChain::new(&host, "bench-job", 1_700_000_000_000);
    let mut quotes = Vec::new();
    let mut pending = Vec::new();
    for i in 0..RECEIPTS {
        let kind = match i {
            0 => ReceiptKind::Start,
            i if i + 1 == RECEIPTS => ReceiptKind::End,
            _ => ReceiptKind::Periodic,
        };
        pending.push(job.issue(&host, kind)?);
        if pending.len() == PER_QUOTE || i + 1 == RECEIPTS {
            quotes.push(host.quote(&pending)?);
            pending.clear();
        }
    }
    let bundle: ReceiptBundle = host.bundle("bench-job", job.receipts, quotes);
    Ok(Setup {
        bundle: bundle.to_json(),
        opts: ReceiptVerifyOptions {
            trust_anchors: fog_tpm::certs::parse_pem_bundle(&anchors)?,
            allow_software_tpm: true,
        },
        state: store.load()?,
    })
}

fn bench(c: &mut Criterion) {
    let Ok(swtpm) = Swtpm::start() else {
        eprintln!("swtpm unavailable: skipping");
        return;
    };
    let made = std::time::Instant::now();
    let s = match setup(&swtpm) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot build the bench bundle: {e}");
            return;
        }
    };
    eprintln!(
        "{RECEIPTS} receipts signed and quoted on swtpm in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    if let Some(path) = std::env::var_os("FOG_RECEIPTS_BENCH_SAVE") {
        let _ = std::fs::write(&path, &s.bundle);
    }
    let now = SystemTime::now();
    let verdict = verify_bundle_at(&s.bundle, &s.opts, &s.state, now);
    assert!(
        verdict.passed,
        "bench bundle does not verify: {:#?}",
        verdict.checks
    );

    // Wall time depends on what else the machine runs; this thread's CPU time does not.
    if let Some(before) = thread_cpu_nanos() {
        let rounds = 20;
        for _ in 0..rounds {
            std::hint::black_box(verify_bundle_at(&s.bundle, &s.opts, &s.state, now));
        }
        if let Some(after) = thread_cpu_nanos() {
            let secs = (after - before) as f64 / 1e9;
            eprintln!(
                "verify_bundle: {:.0} receipts per CPU second ({rounds} bundles of {RECEIPTS} in {secs:.2} s of thread CPU time)",
                (rounds * RECEIPTS) as f64 / secs
            );
        }
    }

    let mut group = c.benchmark_group("verify_receipts");
    group.throughput(Throughput::Elements(RECEIPTS as u64));
    group.sample_size(20);
    group.bench_function(format!("bundle_of_{RECEIPTS}"), |b| {
        b.iter(|| verify_bundle_at(&s.bundle, &s.opts, &s.state, now))
    });
    group.finish();
}

/// This thread's CPU time, ns (`/proc/thread-self/schedstat`, first field).
fn thread_cpu_nanos() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

criterion_group!(benches, bench);
criterion_main!(benches);
