//! Helpers the test modules share: a gRPC client over the agent's unix admin socket, and a
//! bounded SIGTERM of a spawned `fog-agent`.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

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
