//! Certificates: development certificates (`fog-agent dev-certs`, `serve --dev`, the tests) and
//! loading the server's TLS configuration from the files `[api]` names.
//!
//! The development set is a CA, a server certificate for `localhost` and `127.0.0.1`, and one
//! client certificate per role (clientAuth EKU, URI SAN `fog://role/<role>`), all ECDSA P-256.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::auth::Role;

/// How long development certificates are valid.
const DEV_VALIDITY_DAYS: i64 = 825;

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// A development CA with a server certificate and one client certificate per role.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate and key.
    pub ca: PemPair,
    /// Server certificate (SAN `localhost`, `127.0.0.1`, `::1`).
    pub server: PemPair,
    /// Market client.
    pub market: PemPair,
    /// Auditor client.
    pub auditor: PemPair,
    /// Admin client.
    pub admin: PemPair,
}

/// A certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused to build a certificate.
    #[error("cannot generate {what}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held no certificate or was malformed.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
}

fn generate_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { what, source }
}

fn base_params(common_name: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fog-agent development");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(DEV_VALIDITY_DAYS);
    params
}

fn leaf(
    issuer: &CertifiedIssuer<'_, KeyPair>,
    what: &'static str,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<PemPair, TlsError> {
    let mut params = base_params(common_name, sans);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(generate_err(what))?;
    let cert = params.signed_by(&key, issuer).map_err(generate_err(what))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ia5(text: &str, what: &'static str) -> Result<rcgen::string::Ia5String, TlsError> {
    rcgen::string::Ia5String::try_from(text).map_err(generate_err(what))
}

impl DevCerts {
    /// Generates a fresh set.
    pub fn generate() -> Result<Self, TlsError> {
        let mut ca_params = base_params("fog-agent development CA", Vec::new());
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(generate_err("CA key"))?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(generate_err("CA"))?;
        let server = leaf(
            &ca,
            "server certificate",
            "localhost",
            vec![
                SanType::DnsName(ia5("localhost", "server certificate")?),
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = |role: Role| {
            leaf(
                &ca,
                "client certificate",
                &format!("fog {role}"),
                vec![SanType::URI(ia5(&role.uri(), "client certificate")?)],
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        };
        Ok(Self {
            ca: PemPair {
                cert_pem: ca.pem(),
                key_pem: ca_key_pem,
            },
            server,
            market: client(Role::Market)?,
            auditor: client(Role::Auditor)?,
            admin: client(Role::Admin)?,
        })
    }

    /// The client certificate of `role`.
    pub fn client(&self, role: Role) -> &PemPair {
        match role {
            Role::Market => &self.market,
            Role::Auditor => &self.auditor,
            Role::Admin => &self.admin,
        }
    }

    /// Writes `ca.pem`, `server.pem`, `server.key`, and `<role>.pem`/`<role>.key` per role into
    /// `dir` (created if missing); keys get mode 0600. The CA key is not written: nothing more
    /// can be issued from a development set. Returns the files written.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let mut files = vec![
            ("ca.pem", self.ca.cert_pem.as_str(), false),
            ("server.pem", self.server.cert_pem.as_str(), false),
            ("server.key", self.server.key_pem.as_str(), true),
        ];
        for role in Role::ALL {
            let pair = self.client(role);
            files.push((role_file(role, false), pair.cert_pem.as_str(), false));
            files.push((role_file(role, true), pair.key_pem.as_str(), true));
        }
        files
            .into_iter()
            .map(|(name, text, secret)| {
                let path = dir.join(name);
                write_file(&path, text, secret)?;
                Ok(path)
            })
            .collect()
    }
}

fn role_file(role: Role, key: bool) -> &'static str {
    match (role, key) {
        (Role::Market, false) => "market.pem",
        (Role::Market, true) => "market.key",
        (Role::Auditor, false) => "auditor.pem",
        (Role::Auditor, true) => "auditor.key",
        (Role::Admin, false) => "admin.pem",
        (Role::Admin, true) => "admin.key",
    }
}

/// Writes a file atomically enough for certificates; secrets are created with mode 0600 (never
/// world-readable, not even briefly).
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(io)?;
    if secret {
        // An existing file keeps its old mode on open: tighten it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)
}

/// Reads a whole file, naming it on error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem_text: &str) -> Result<Vec<u8>, TlsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| TlsError::NoCertificate("PEM text".into()))?;
    if pem.label != "CERTIFICATE" {
        return Err(TlsError::NoCertificate(format!("PEM block {}", pem.label)));
    }
    Ok(pem.contents)
}

/// The server side of mutual TLS from the files `[api]` names: client certificates are
/// required and must chain to `client_ca`.
pub fn server_tls_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
    let cert_pem = read_file(cert)?;
    let key_pem = read_file(key)?;
    let ca_pem = read_file(client_ca)?;
    for (path, pem) in [(cert, &cert_pem), (client_ca, &ca_pem)] {
        let text = String::from_utf8_lossy(pem);
        pem_to_der(&text).map_err(|_| TlsError::NoCertificate(path.display().to_string()))?;
    }
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca_pem))
        .client_auth_optional(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_the_named_files_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let files = DevCerts::generate().unwrap().write_to(&out).unwrap();
        let mut names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "admin.key",
                "admin.pem",
                "auditor.key",
                "auditor.pem",
                "ca.pem",
                "market.key",
                "market.pem",
                "server.key",
                "server.pem"
            ]
        );
        for file in &files {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            let is_key = file.extension().is_some_and(|e| e == "key");
            assert_eq!(mode, if is_key { 0o600 } else { 0o644 }, "{file:?}");
        }
    }

    #[test]
    fn server_certificate_names_localhost_and_loopback() {
        let certs = DevCerts::generate().unwrap();
        let der = pem_to_der(&certs.server.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        assert!(text.contains("DNSName(\"localhost\")"), "{text}");
        assert!(text.contains("IPAddress([127, 0, 0, 1])"), "{text}");
        let ca = pem_to_der(&certs.ca.cert_pem).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        assert!(ca.is_ca());
        assert_eq!(cert.issuer(), ca.subject());
    }

    #[test]
    fn bad_pem_is_rejected() {
        assert!(pem_to_der("hello").is_err());
        let key = DevCerts::generate().unwrap().server.key_pem;
        assert!(pem_to_der(&key).is_err());
    }
}
