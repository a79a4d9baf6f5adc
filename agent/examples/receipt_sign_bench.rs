//! TPM time per usage receipt on swtpm (a benchmark, not a test): what the receipts issuer
//! asks of the TPM for each receipt (one ECDSA signature by the identity key over the receipt's
//! signing digest) and for each batch (one AK quote), through the daemon's own
//! [`ReceiptKeys`] implementation, which opens the TPM and loads the key per call.
//!
//! ```sh
//! benches/receipt-sign.sh            # release build, 200 signatures, 50 quotes
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fog_agent::attest::identity::TpmIdentity;
use fog_agent::receipts::ReceiptKeys;
use fog_tpm::ak::{AkAlg, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::receipt::{quote_qualifying_data, signing_digest};
use fog_tpm::testing::Swtpm;

/// TPM signing and quoting time per receipt on swtpm.
#[derive(Debug, Parser)]
struct Args {
    /// Receipts to sign.
    #[arg(long, default_value_t = 200)]
    signs: usize,
    /// Quotes to take.
    #[arg(long, default_value_t = 50)]
    quotes: usize,
}

fn summary(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let total: Duration = times.iter().sum();
    let n = times.len().max(1);
    let at = |q: f64| times[((n - 1) as f64 * q).round() as usize];
    println!(
        "{what:<28} n={n:<5} median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms  mean {:>7.2} ms  => {:>6.1}/s",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0)),
        ms(total) / n as f64,
        n as f64 / total.as_secs_f64()
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let swtpm = Swtpm::start().context("swtpm")?;
    let state = swtpm.scratch("agent");
    let ak = Tpm::open(&swtpm.tcti())?.create_ak(AkAlg::Rsa, EkAlg::Rsa, "bench-host")?;
    ak.save(&state)?;
    let keys = TpmIdentity::new(swtpm.tcti(), state);
    // The identity key is created (and certified) once, on first use: not timed.
    ReceiptKeys::certified_key(&keys)?;
    let body = br#"{"format":"fog-receipt-v1","host_id":"bench-host","job_id":"j","seq":1}"#;
    let mut signs = Vec::with_capacity(args.signs);
    for i in 0..args.signs {
        let mut b = body.to_vec();
        b.extend_from_slice(i.to_string().as_bytes());
        let t = Instant::now();
        ReceiptKeys::sign_digest(&keys, &signing_digest(&b))?;
        signs.push(t.elapsed());
    }
    let mut quotes = Vec::with_capacity(args.quotes);
    for i in 0..args.quotes {
        let qd = quote_qualifying_data(i as u64, &[0; 32], &[[1; 32]; 10]);
        let t = Instant::now();
        ReceiptKeys::quote(&keys, &qd)?;
        quotes.push(t.elapsed());
    }
    summary("sign per receipt", signs);
    summary("quote per batch", quotes);
    Ok(())
}
