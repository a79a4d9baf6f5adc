//! systemd readiness notification (`sd_notify(3)`) for `Type=notify` units: a datagram such
//! as `READY=1` to the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket). A few lines over `UnixDatagram` instead of a crate or libsystemd.
//!
//! [`Notifier::take_from_env`] reads and *removes* `NOTIFY_SOCKET` at start-up, before any
//! thread or child exists: children (benchmark processes, runc, whose own `NOTIFY_SOCKET`
//! handling would otherwise wait for the container to report ready) must not inherit it.
//! Without the variable (not started by systemd) every notification is a no-op.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// A notifier for the socket `NOTIFY_SOCKET` names, which is removed from the environment.
    /// Call before starting threads or children.
    pub fn take_from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        if socket.is_some() {
            // Safe in edition 2021; the process is still single-threaded here (see above).
            std::env::remove_var("NOTIFY_SOCKET");
        }
        Self { socket }
    }

    /// A notifier for an explicit socket (`/path` or `@abstract`).
    pub fn new(socket: impl Into<OsString>) -> Self {
        Self {
            socket: Some(socket.into()),
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines, e.g. `READY=1`). Returns false when
    /// no service manager listens.
    pub fn notify(&self, state: &str) -> io::Result<bool> {
        let Some(socket) = &self.socket else {
            return Ok(false);
        };
        let bytes = socket.as_encoded_bytes();
        let datagram = UnixDatagram::unbound()?;
        match bytes.split_first() {
            Some((b'@', name)) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                datagram.send_to_addr(state.as_bytes(), &addr)?;
            }
            Some((b'/', _)) => {
                datagram.send_to(state.as_bytes(), PathBuf::from(socket))?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET {socket:?} is neither a path nor @abstract"),
                ))
            }
        }
        Ok(true)
    }

    /// [`Self::notify`], logging a failure instead of returning it (a lost notification must
    /// not stop the agent; systemd then reports the start as timed out).
    pub fn notify_or_log(&self, state: &str) {
        match self.notify(state) {
            Ok(true) => tracing::debug!(state, "notified the service manager"),
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, state, "cannot notify the service manager"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.as_os_str());
        assert!(notifier.notify("READY=1\nSTATUS=serving").unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fog-agent-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(Notifier::new(format!("@{name}"))
            .notify("STOPPING=1")
            .unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn no_socket_is_a_no_op_and_a_bad_one_an_error() {
        assert!(!Notifier::default().notify("READY=1").unwrap());
        assert!(Notifier::new("relative").notify("READY=1").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(Notifier::new(dir.path().join("absent").as_os_str())
            .notify("READY=1")
            .is_err());
    }
}
