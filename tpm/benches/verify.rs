//! Verification throughput (reports per second on one core) with RSA and ECC AKs, against
//! running `tpm2_checkquote` once per report, and the time of one quote on swtpm.
//!
//! `cargo bench -p fog-tpm --features test-util --bench verify`

use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fog_tpm::ak::{AkAlg, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::report::{parse_pcr_spec, qualifying_data, Report};
use fog_tpm::testing::Swtpm;
use fog_tpm::verify::{verify_report, History, VerifyOptions};

fn make_report(tpm: &Tpm, alg: AkAlg, nonce: &[u8]) -> Result<Report, Box<dyn std::error::Error>> {
    let ak = tpm.create_ak(alg, EkAlg::Rsa, "bench-host")?;
    let payload = serde_json::to_vec(&serde_json::json!({
        "format": "fog-attest-v1-payload", "host_id": "bench-host",
        "nonce": base64_nonce(nonce), "agent_version": "bench",
        "collected_at": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs(),
        "inventory": {}, "benchmarks": null
    }))?;
    Ok(tpm.attest(&ak, nonce, payload, &parse_pcr_spec("sha256:0-7")?)?)
}

fn base64_nonce(n: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(n)
}

fn bench(c: &mut Criterion) {
    let Ok(swtpm) = Swtpm::start() else {
        eprintln!("swtpm unavailable: skipping");
        return;
    };
    let Ok(tpm) = Tpm::open(&swtpm.tcti()) else {
        return;
    };
    let Ok(anchors) = swtpm.trust_anchors_pem() else {
        return;
    };
    let Ok(anchors) = fog_tpm::certs::parse_pem_bundle(&anchors) else {
        return;
    };
    let nonce = [7u8; 32];
    let opts = VerifyOptions {
        nonce: nonce.to_vec(),
        pcrs: parse_pcr_spec("sha256:0-7").unwrap_or_default(),
        trust_anchors: anchors,
        allow_software_tpm: true,
        now: SystemTime::now(),
        max_age: None,
    };
    let mut group = c.benchmark_group("verify_report");
    group.throughput(Throughput::Elements(1));
    for alg in [AkAlg::Rsa, AkAlg::Ecc] {
        let Ok(report) = make_report(&tpm, alg, &nonce) else {
            return;
        };
        let history = History {
            enrolled_ek_pub: Some(report.tpm.ek_pub.clone()),
            enrolled_host_id: Some(report.host_id.clone()),
            ..History::default()
        };
        assert!(
            verify_report(&report, &opts, &history).ok,
            "bench report does not verify"
        );
        group.bench_function(format!("{alg:?}_ak"), |b| {
            b.iter(|| verify_report(&report, &opts, &history))
        });

        let verifier = fog_tpm::verify::Verifier::new(opts.clone());
        group.bench_function(format!("{alg:?}_ak_cached_ek_checks"), |b| {
            b.iter(|| verifier.verify(&report, &history))
        });

        let Ok(dir) = tempfile::tempdir() else { return };
        let Ok(q) = fog_tpm::export::export_tpm2_tools(&report, dir.path()) else {
            return;
        };
        group.bench_function(format!("{alg:?}_ak_tpm2_checkquote_process"), |b| {
            b.iter(|| {
                std::process::Command::new("tpm2_checkquote")
                    .current_dir(dir.path())
                    .args([
                        "-u",
                        "ak.pub.pem",
                        "-m",
                        "quote.msg",
                        "-s",
                        "quote.sig",
                        "-f",
                        "pcrs.bin",
                        "-g",
                        "sha256",
                        "-q",
                        &q,
                    ])
                    .output()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("swtpm");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for alg in [AkAlg::Rsa, AkAlg::Ecc] {
        let Ok(ak) = tpm.create_ak(alg, EkAlg::Rsa, "bench-host") else {
            return;
        };
        let qd = qualifying_data(&nonce, b"{}");
        let Ok(sel) = parse_pcr_spec("sha256:0-7") else {
            return;
        };
        // EK creation + AK load + quote + PCR read + flushes: what one report costs the agent.
        group.bench_function(format!("{alg:?}_quote_with_ek_and_ak_load"), |b| {
            b.iter(|| tpm.quote(&ak, &qd, &sel))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
