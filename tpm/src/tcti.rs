//! TCTI strings (how to reach a TPM): `device:/dev/tpmrm0` (the default: the kernel resource
//! manager, never `/dev/tpm0`), `swtpm:host=H,port=P` and `mssim:host=H,port=P`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// The default TCTI.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// A malformed TCTI string.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("TCTI \"{given}\" is malformed: {reason} (expected device:/dev/tpmrm0, swtpm:host=H,port=P or mssim:host=H,port=P)")]
pub struct TctiError {
    given: String,
    reason: String,
}

/// A parsed TCTI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tcti {
    /// A character device.
    Device(PathBuf),
    /// swtpm's TCP socket interface.
    Swtpm {
        /// Host name or address.
        host: String,
        /// Command port (the control port is port + 1).
        port: u16,
    },
    /// The Microsoft simulator protocol.
    Mssim {
        /// Host name or address.
        host: String,
        /// Command port.
        port: u16,
    },
}

impl Default for Tcti {
    fn default() -> Self {
        Self::Device(PathBuf::from("/dev/tpmrm0"))
    }
}

impl FromStr for Tcti {
    type Err = TctiError;

    fn from_str(s: &str) -> Result<Self, TctiError> {
        let err = |reason: &str| TctiError {
            given: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, conf) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "device" => {
                let path = if conf.is_empty() { "/dev/tpmrm0" } else { conf };
                if !path.starts_with('/') {
                    return Err(err("the device path must be absolute"));
                }
                Ok(Self::Device(PathBuf::from(path)))
            }
            "swtpm" | "mssim" => {
                let (mut host, mut port) = ("localhost".to_string(), 2321u16);
                for kv in conf.split(',').filter(|kv| !kv.is_empty()) {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| err("options must be key=value"))?;
                    match k {
                        "host" if !v.is_empty() => host = v.to_string(),
                        "port" => {
                            port = v
                                .parse()
                                .map_err(|_| err("port must be a number 1-65535"))?
                        }
                        _ => return Err(err(&format!("unknown option \"{k}\""))),
                    }
                }
                if port == 0 {
                    return Err(err("port must be a number 1-65535"));
                }
                Ok(if kind == "swtpm" {
                    Self::Swtpm { host, port }
                } else {
                    Self::Mssim { host, port }
                })
            }
            _ => Err(err(&format!("unknown kind \"{kind}\""))),
        }
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(p) => write!(f, "device:{}", p.display()),
            Self::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
            Self::Mssim { host, port } => write!(f, "mssim:host={host},port={port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_three_kinds() {
        for s in [
            "device:/dev/tpmrm0",
            "swtpm:host=127.0.0.1,port=4000",
            "mssim:host=tpm,port=2321",
        ] {
            assert_eq!(s.parse::<Tcti>().unwrap().to_string(), s);
        }
        assert_eq!("device".parse::<Tcti>().unwrap(), Tcti::default());
        assert_eq!(
            "swtpm:port=5".parse::<Tcti>().unwrap(),
            Tcti::Swtpm {
                host: "localhost".into(),
                port: 5
            }
        );
    }

    #[test]
    fn rejects_malformed_strings_naming_the_problem() {
        for (s, why) in [
            ("tabrmd:", "unknown kind"),
            ("device:tpm0", "absolute"),
            ("swtpm:port=x", "port"),
            ("swtpm:port=0", "port"),
            ("swtpm:hots=a", "unknown option"),
            ("swtpm:host", "key=value"),
        ] {
            let e = s.parse::<Tcti>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
