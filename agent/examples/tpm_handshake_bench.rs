//! What the TPM-resident identity key costs the market link (a benchmark, not a test): mutual
//! TLS handshakes in memory (rustls on both sides, the agent's client configuration from
//! `market_client_config`) with `client_key = "tpm"` on swtpm against the same handshakes with
//! a key file, in alternating blocks (full handshakes: a resumed TLS session signs nothing;
//! the TPM's signature alone is `benches/receipt-sign.sh`).
//!
//! ```sh
//! cargo run --release -p fog-agent --example tpm_handshake_bench -- --handshakes 100
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use fog_agent::api::tls::{issue_agent_certificate, market_client_config, ClientKey, DevCerts};
use fog_agent::attest::TpmIdentity;
use fog_agent::market::tpm_key::TpmClientKey;
use fog_tpm::ak::{AkAlg, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::testing::Swtpm;
use tokio_rustls::rustls;

/// Handshake cost with the TPM key against a key file.
#[derive(Debug, Parser)]
struct Args {
    /// Handshakes of each kind.
    #[arg(long, default_value_t = 100)]
    handshakes: usize,
    /// Handshakes per block (blocks alternate between the kinds).
    #[arg(long, default_value_t = 10)]
    block: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.block > 0 && args.handshakes >= args.block,
        "--block must be in 1..=--handshakes"
    );
    let swtpm = Swtpm::start()?;
    let state = swtpm.scratch("state");
    let tpm = Tpm::open(&swtpm.tcti())?;
    tpm.create_ak(AkAlg::Rsa, EkAlg::Rsa, "bench-host")?
        .save(&state)?;
    let identity = TpmIdentity::new(swtpm.tcti(), state.clone());
    identity.key()?;

    let dev = DevCerts::generate_for("bench-host")?;
    let certs = swtpm.scratch("certs");
    dev.write_to(&certs)?;
    let tpm_cert = certs.join("agent-tpm.pem");
    std::fs::write(
        &tpm_cert,
        issue_agent_certificate(
            &dev.ca.cert_pem,
            &dev.ca.key_pem,
            "bench-host",
            &identity.public_point()?,
            1,
        )?,
    )?;
    let ca = certs.join("ca.pem");
    // Full handshakes only: a resumed session carries no new client signature.
    let no_resumption = |mut config: rustls::ClientConfig| {
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    let with_tpm = no_resumption(market_client_config(
        &ca,
        &tpm_cert,
        &ClientKey::Signer(Arc::new(
            TpmClientKey::load(swtpm.tcti(), &state).map_err(anyhow::Error::msg)?,
        )),
    )?);
    let with_file = no_resumption(market_client_config(
        &ca,
        &certs.join("agent.pem"),
        &ClientKey::File(certs.join("agent.key")),
    )?);
    let server = Arc::new(server_config(&dev)?);

    // Warm-up: one of each (the first TPM use loads the TCTI library).
    handshake(&with_tpm, &server)?;
    handshake(&with_file, &server)?;
    let (mut tpm_times, mut file_times) = (Vec::new(), Vec::new());
    while tpm_times.len() < args.handshakes {
        for _ in 0..args.block {
            tpm_times.push(handshake(&with_tpm, &server)?);
        }
        for _ in 0..args.block {
            file_times.push(handshake(&with_file, &server)?);
        }
    }
    let (tpm_p50, file_p50) = (median(&mut tpm_times), median(&mut file_times));
    println!(
        "handshakes: {} each, blocks of {}\n\
         client_key = \"tpm\" (swtpm): p50 {:.2} ms, p95 {:.2} ms\n\
         client_key = file:            p50 {:.2} ms, p95 {:.2} ms\n\
         ratio (p50): {:.1}x",
        args.handshakes,
        args.block,
        ms(tpm_p50),
        ms(percentile(&tpm_times, 95)),
        ms(file_p50),
        ms(percentile(&file_times, 95)),
        tpm_p50.as_secs_f64() / file_p50.as_secs_f64(),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sorts and returns the median.
fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// The `p`th percentile of sorted `times`.
fn percentile(times: &[Duration], p: usize) -> Duration {
    times[(times.len() * p / 100).min(times.len() - 1)]
}

/// A server requiring a client certificate from the development CA.
fn server_config(dev: &DevCerts) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(dev.ca.cert_pem.as_bytes())?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(
                dev.server.cert_pem.as_bytes(),
            )?],
            PrivateKeyDer::from_pem_slice(dev.server.key_pem.as_bytes())?,
        )?)
}

/// One full handshake in memory; returns its duration.
fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut c = rustls::ClientConnection::new(client.clone(), name)?;
    let mut s = rustls::ServerConnection::new(server.clone())?;
    while c.is_handshaking() || s.is_handshaking() {
        let mut buf = Vec::new();
        c.write_tls(&mut buf)?;
        s.read_tls(&mut buf.as_slice())?;
        s.process_new_packets().context("server")?;
        let mut buf = Vec::new();
        s.write_tls(&mut buf)?;
        c.read_tls(&mut buf.as_slice())?;
        c.process_new_packets().context("client")?;
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "handshake stalled"
        );
    }
    ensure!(
        s.peer_certificates().is_some_and(|c| !c.is_empty()),
        "no client certificate"
    );
    Ok(start.elapsed())
}
