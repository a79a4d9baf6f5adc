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
use tokio_rustls::rustls;

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
    /// The agent's client certificate for the market link (URI SAN `fog://agent/<host_id>`).
    pub agent: PemPair,
    /// A market's server certificate for trials of the market link (SAN `localhost`,
    /// `127.0.0.1`, `::1`, URI SAN `fog://role/market`).
    pub market_server: PemPair,
}

/// The URI SAN prefix that names an agent host (`fog://agent/<host_id>`).
pub const AGENT_URI_PREFIX: &str = "fog://agent/";

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

/// The agent's market-link client certificate for a key the CA checked (an identity request):
/// CN `fog agent <host_id>`, URI SAN `fog://agent/<host_id>`, clientAuth, ECDSA P-256 key given
/// as its SEC1 point, valid from an hour ago for `days`, signed by the CA (`ca_cert_pem`,
/// `ca_key_pem`: PEM certificate and PKCS#8 key).
pub fn issue_agent_certificate(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    host_id: &str,
    key_point: &[u8],
    days: u32,
) -> Result<String, TlsError> {
    const WHAT: &str = "agent certificate";
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(generate_err("CA key"))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(generate_err("CA"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("fog agent {host_id}"));
    params.subject_alt_names = vec![SanType::URI(ia5(
        &format!("{AGENT_URI_PREFIX}{host_id}"),
        WHAT,
    )?)];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial)
        .map_err(|_| generate_err(WHAT)(rcgen::Error::RingUnspecified))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = params
        .signed_by(&P256Point(key_point), &issuer)
        .map_err(generate_err(WHAT))?;
    Ok(cert.pem())
}

/// An ECDSA P-256 public key given as its SEC1 point.
struct P256Point<'a>(&'a [u8]);

impl rcgen::PublicKeyData for P256Point<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl DevCerts {
    /// Generates a fresh set; the agent certificate names `host_id`.
    pub fn generate_for(host_id: &str) -> Result<Self, TlsError> {
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
        let agent = leaf(
            &ca,
            "agent certificate",
            &format!("fog agent {host_id}"),
            vec![SanType::URI(ia5(
                &format!("{AGENT_URI_PREFIX}{host_id}"),
                "agent certificate",
            )?)],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let market_server = leaf(
            &ca,
            "market server certificate",
            "localhost",
            vec![
                SanType::DnsName(ia5("localhost", "market server certificate")?),
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
                SanType::URI(ia5(&Role::Market.uri(), "market server certificate")?),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(Self {
            ca: PemPair {
                cert_pem: ca.pem(),
                key_pem: ca_key_pem,
            },
            agent,
            market_server,
            server,
            market: client(Role::Market)?,
            auditor: client(Role::Auditor)?,
            admin: client(Role::Admin)?,
        })
    }

    /// Generates a fresh set for the development host id `dev-host`.
    pub fn generate() -> Result<Self, TlsError> {
        Self::generate_for("dev-host")
    }

    /// The client certificate of `role`.
    pub fn client(&self, role: Role) -> &PemPair {
        match role {
            Role::Market => &self.market,
            Role::Auditor => &self.auditor,
            Role::Admin => &self.admin,
        }
    }

    /// Writes `ca.pem`, `server.pem`, `server.key`, `<role>.pem`/`<role>.key` per role, and the
    /// market link's `agent.pem`/`agent.key` and `market-server.pem`/`market-server.key` into
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
        files.push(("agent.pem", self.agent.cert_pem.as_str(), false));
        files.push(("agent.key", self.agent.key_pem.as_str(), true));
        files.push((
            "market-server.pem",
            self.market_server.cert_pem.as_str(),
            false,
        ));
        files.push((
            "market-server.key",
            self.market_server.key_pem.as_str(),
            true,
        ));
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

/// The files the server side of mutual TLS is built from (`[api]` `tls_cert`, `tls_key`,
/// `client_ca`, `crl_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server certificate's private key (PEM).
    pub key: PathBuf,
    /// The CA client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Certificate revocation list (PEM), if any.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.client_ca]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(self.crl.as_deref())
    }
}

/// Why a server TLS configuration could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] TlsError),
    /// A PEM file held nothing usable of what it should.
    #[error("{path} holds no PEM {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// `certificate`, `private key`, `CRL`.
        what: &'static str,
    },
    /// A PEM file is malformed.
    #[error("{path} is not valid PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the client CA or the CRL.
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the certificate, the key or the protocol versions.
    #[error("cannot build the TLS server configuration")]
    Config(#[source] rustls::Error),
    /// The certificate is not for the signing key.
    #[error("{path} is not a certificate for the TPM identity key (issue one with `fog-agent attest identity-request` and `fog-agent verify identity`)")]
    KeyMismatch {
        /// The certificate file.
        path: PathBuf,
    },
}

fn pem_items<T: rustls::pki_types::pem::PemObject>(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
) -> Result<Vec<T>, ServerTlsError> {
    let items = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ServerTlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if items.is_empty() {
        return Err(ServerTlsError::Empty {
            path: path.to_owned(),
            what,
        });
    }
    Ok(items)
}

/// The server side of mutual TLS from `files`: client certificates are required, must chain to
/// the client CA and must not be revoked by the CRL (end-entity certificates; a CRL past its
/// next update is still used); TLS 1.2 and 1.3; ALPN `h2`.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServerTlsError> {
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        pem_items(&files.cert, &read_file(&files.cert)?, "certificate")?;
    let key = private_key(&files.key)?;
    let roots = root_store(&files.client_ca)?;
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    );
    if let Some(crl) = &files.crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            pem_items(crl, &read_file(crl)?, "CRL")?;
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(ServerTlsError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ServerTlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(ServerTlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The one private key in a PEM file.
fn private_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ServerTlsError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&read_file(path)?).map_err(|source| {
        match source {
            rustls::pki_types::pem::Error::NoItemsFound => ServerTlsError::Empty {
                path: path.to_owned(),
                what: "private key",
            },
            source => ServerTlsError::Pem {
                path: path.to_owned(),
                source,
            },
        }
    })
}

/// The CA certificates of a PEM file as trust roots.
fn root_store(path: &Path) -> Result<rustls::RootCertStore, ServerTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<rustls::pki_types::CertificateDer<'static>> =
        pem_items(path, &read_file(path)?, "certificate")?;
    for ca in cas {
        roots.add(ca).map_err(ServerTlsError::Config)?;
    }
    Ok(roots)
}

/// The agent's private key for the market link.
#[derive(Debug, Clone)]
pub enum ClientKey {
    /// A PEM private key file.
    File(PathBuf),
    /// A key that signs elsewhere (the TPM-resident identity key), checked to be the key of
    /// the certificate.
    Signer(std::sync::Arc<dyn rustls::sign::SigningKey>),
}

/// The client side of mutual TLS towards a market (`[market]` `ca`, `client_cert`,
/// `client_key`): the server certificate must chain to `ca` (and match the host name, which
/// the handshake checks); TLS 1.2 and 1.3; ALPN `h2`. Read from the files on every call, so a
/// renewed certificate is used from the next connection on.
pub fn market_client_config(
    ca: &Path,
    cert: &Path,
    key: &ClientKey,
) -> Result<rustls::ClientConfig, ServerTlsError> {
    use rustls::pki_types::CertificateDer;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = root_store(ca)?;
    let chain: Vec<CertificateDer<'static>> = pem_items(cert, &read_file(cert)?, "certificate")?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ServerTlsError::Config)?
        .with_root_certificates(roots);
    let mut config = match key {
        ClientKey::File(path) => builder
            .with_client_auth_cert(chain, private_key(path)?)
            .map_err(ServerTlsError::Config)?,
        ClientKey::Signer(signer) => {
            let certified = rustls::sign::CertifiedKey::new(chain, signer.clone());
            certified
                .keys_match()
                .map_err(|_| ServerTlsError::KeyMismatch {
                    path: cert.to_owned(),
                })?;
            builder.with_client_cert_resolver(std::sync::Arc::new(FixedClientCert(
                std::sync::Arc::new(certified),
            )))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Always the one certificate and key, whatever the server asks.
#[derive(Debug)]
struct FixedClientCert(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What identifies a file's content without reading it: inode, size, modification time
/// (a replaced or rewritten file changes at least one).
type FileStamp = Option<(u64, u64, std::time::SystemTime)>;

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()?))
}

/// The server's TLS configuration, swapped as a whole when its files change: each new
/// connection's handshake uses [`ServerTls::current`]; connections already open keep the
/// configuration they were accepted with, so reloading never drops a stream.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: std::sync::RwLock<std::sync::Arc<rustls::ServerConfig>>,
    stamps: std::sync::Mutex<Vec<FileStamp>>,
    reloads_ok: std::sync::atomic::AtomicU64,
    reloads_failed: std::sync::atomic::AtomicU64,
}

impl ServerTls {
    /// Loads the files; an error here fails the start.
    pub fn load(files: TlsFiles) -> Result<Self, ServerTlsError> {
        let stamps = files.paths().map(stamp).collect();
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: std::sync::RwLock::new(std::sync::Arc::new(config)),
            stamps: std::sync::Mutex::new(stamps),
            reloads_ok: Default::default(),
            reloads_failed: Default::default(),
        })
    }

    /// Reloads since start: (succeeded, failed).
    pub fn reload_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
        )
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> std::sync::Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Builds the configuration from the files again and swaps it in; on error the previous
    /// one stays in use.
    pub fn reload(&self) -> Result<(), ServerTlsError> {
        use std::sync::atomic::Ordering::Relaxed;
        let stamps: Vec<FileStamp> = self.files.paths().map(stamp).collect();
        let config = match server_config(&self.files) {
            Ok(config) => config,
            Err(err) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                // Tried again at the next change check, not at every one.
                *self
                    .stamps
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps;
                return Err(err);
            }
        };
        self.reloads_ok.fetch_add(1, Relaxed);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(config);
        *self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps;
        Ok(())
    }

    /// Reloads when a file's inode, size or modification time changed since the last load;
    /// returns whether it reloaded. A failed reload is tried again when a file changes again.
    pub fn reload_if_changed(&self) -> Result<bool, ServerTlsError> {
        let now: Vec<FileStamp> = self.files.paths().map(stamp).collect();
        let changed = *self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            != now;
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn market_link_certificates_name_the_agent_and_the_market_role() {
        let certs = DevCerts::generate_for("host-7").unwrap();
        let agent = pem_to_der(&certs.agent.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&agent).unwrap();
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["fog://agent/host-7"]);
        let market = pem_to_der(&certs.market_server.cert_pem).unwrap();
        assert_eq!(
            super::super::auth::role_from_certificate(&market),
            Ok(Role::Market)
        );
        assert_eq!(
            super::super::auth::role_from_certificate(&agent),
            Err(super::super::auth::RoleError::NoRole),
            "an agent certificate is no role"
        );
    }

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
                "agent.key",
                "agent.pem",
                "auditor.key",
                "auditor.pem",
                "ca.pem",
                "market-server.key",
                "market-server.pem",
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
