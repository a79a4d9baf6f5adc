//! Helpers the test modules share: a gRPC client over the agent's unix admin socket, a
//! bounded SIGTERM of a spawned `fog-agent`, the config of an in-process mTLS daemon, and the
//! skip rule.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

/// An unreachable TCTI: nothing listens on port 1.
pub(crate) const NO_TPM_TCTI: &str = "swtpm:host=127.0.0.1,port=1";

/// The config of a daemon in `dir` serving mutual TLS on a loopback port with the
/// development certificates written to `dir/certs`, its admin socket and state in `dir`,
/// metrics on a loopback port, no TPM, no benchmark run at start and no job network.
pub(crate) fn mtls_config(dir: &Path) -> fog_agent::config::Config {
    let mut config = fog_agent::config::Config::default();
    config.api.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.api.unix_socket = dir.join("run/agent.sock");
    config.api.tls_cert = dir.join("certs/server.pem");
    config.api.tls_key = dir.join("certs/server.key");
    config.api.client_ca = dir.join("certs/ca.pem");
    config.api.shutdown_grace_millis = 2000;
    config.state.dir = dir.join("state");
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.tpm.tcti = NO_TPM_TCTI.into();
    config.bench.run_on_start = false;
    config.jobs.network = fog_agent::config::JobNetwork::None;
    config
}

/// A client of the agent listening on the unix socket at `socket`.
pub(crate) async fn unix_client(socket: &Path) -> AgentClient<Channel> {
    AgentClient::new(
        fog_agent::cli::connect_unix(socket.to_owned())
            .await
            .unwrap(),
    )
}

/// Sends SIGTERM to `child` and waits at most 10 s for it to exit.
pub(crate) fn terminate(child: &mut Child) -> ExitStatus {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "fog-agent did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The skip rule: a test whose precondition is missing on this machine returns early after
/// saying why on stderr (`skipped: <test>: <reason>`, shown by `--nocapture` and in a failed
/// run's output), except in CI ([`in_ci`]), where the setup installs everything the tests need,
/// so a missing precondition is a broken setup and fails the test instead of hiding it.
///
/// Call as `if ... { return skip(test, reason); }`.
#[track_caller]
pub(crate) fn skip(test: &str, reason: &str) {
    if in_ci() {
        panic!("{test}: {reason} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipped: {test}: {reason}");
}

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false` (CI systems set
/// `CI=true`; `.ci/run` sets it too).
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}
