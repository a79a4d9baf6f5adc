//! Helpers the test modules share: a gRPC client over the agent's unix admin socket, and a
//! bounded SIGTERM of a spawned `fog-agent`.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

/// A client of the agent listening on the unix socket at `socket`.
pub(crate) async fn unix_client(socket: &Path) -> AgentClient<Channel> {
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://agent.local")
        .connect_with_connector(connector)
        .await
        .unwrap();
    AgentClient::new(channel)
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
