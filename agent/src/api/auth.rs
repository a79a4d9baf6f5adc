//! Who may call what: roles, the per-RPC role table, and reading the caller's role.
//!
//! On TLS listeners the role comes from the client certificate's URI SAN
//! (`fog://role/market|auditor|admin`); the TLS handshake has already checked that the
//! certificate chains to `[api] client_ca`. The unix socket (and plaintext loopback in
//! development) is the local admin door. [`allowed`] is the one table every RPC is checked
//! against.

use std::fmt;

use x509_parser::extensions::GeneralName;

/// The URI SAN prefix that carries a role.
pub const ROLE_URI_PREFIX: &str = "fog://role/";

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The market: inventory, benchmarks, capacity, telemetry, attestation, jobs and their
    /// usage receipts.
    Market,
    /// An auditor: inventory, benchmarks, attestation.
    Auditor,
    /// The host's operator: everything (including image import).
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Market, Role::Auditor, Role::Admin];

    /// The role's name in its URI (`market`, `auditor`, `admin`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Market => "market",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// The role's URI SAN, e.g. `fog://role/market`.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.name())
    }

    /// Parses a role name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The RPCs of `fog.agent.v1.Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// GetInventory.
    GetInventory,
    /// GetBenchmarks.
    GetBenchmarks,
    /// RunBenchmarks.
    RunBenchmarks,
    /// GetCapacity.
    GetCapacity,
    /// WatchCapacity.
    WatchCapacity,
    /// WatchHostTelemetry.
    WatchHostTelemetry,
    /// GetAttestation.
    GetAttestation,
    /// GetEnrollment.
    GetEnrollment,
    /// ActivateCredential.
    ActivateCredential,
    /// StartJob.
    StartJob,
    /// StopJob.
    StopJob,
    /// GetJob.
    GetJob,
    /// ListJobs.
    ListJobs,
    /// WatchJob.
    WatchJob,
    /// JobLogs.
    JobLogs,
    /// ImportImage.
    ImportImage,
    /// RemoveImage.
    RemoveImage,
    /// GetMarketLinks.
    GetMarketLinks,
    /// PullImage.
    PullImage,
    /// GetReceipts.
    GetReceipts,
    /// WatchReceipts.
    WatchReceipts,
}

impl Rpc {
    /// Every RPC.
    pub const ALL: [Rpc; 21] = [
        Rpc::GetInventory,
        Rpc::GetBenchmarks,
        Rpc::RunBenchmarks,
        Rpc::GetCapacity,
        Rpc::WatchCapacity,
        Rpc::WatchHostTelemetry,
        Rpc::GetAttestation,
        Rpc::GetEnrollment,
        Rpc::ActivateCredential,
        Rpc::StartJob,
        Rpc::StopJob,
        Rpc::GetJob,
        Rpc::ListJobs,
        Rpc::WatchJob,
        Rpc::JobLogs,
        Rpc::ImportImage,
        Rpc::RemoveImage,
        Rpc::GetMarketLinks,
        Rpc::PullImage,
        Rpc::GetReceipts,
        Rpc::WatchReceipts,
    ];

    /// The method name on the wire (`StartJob`).
    pub fn method(self) -> &'static str {
        match self {
            Rpc::GetInventory => "GetInventory",
            Rpc::GetBenchmarks => "GetBenchmarks",
            Rpc::RunBenchmarks => "RunBenchmarks",
            Rpc::GetCapacity => "GetCapacity",
            Rpc::WatchCapacity => "WatchCapacity",
            Rpc::WatchHostTelemetry => "WatchHostTelemetry",
            Rpc::GetAttestation => "GetAttestation",
            Rpc::GetEnrollment => "GetEnrollment",
            Rpc::ActivateCredential => "ActivateCredential",
            Rpc::StartJob => "StartJob",
            Rpc::StopJob => "StopJob",
            Rpc::GetJob => "GetJob",
            Rpc::ListJobs => "ListJobs",
            Rpc::WatchJob => "WatchJob",
            Rpc::JobLogs => "JobLogs",
            Rpc::ImportImage => "ImportImage",
            Rpc::RemoveImage => "RemoveImage",
            Rpc::GetMarketLinks => "GetMarketLinks",
            Rpc::PullImage => "PullImage",
            Rpc::GetReceipts => "GetReceipts",
            Rpc::WatchReceipts => "WatchReceipts",
        }
    }

    /// Whether the RPC changes the host's state (every call is an audit event).
    pub fn changes_state(self) -> bool {
        use Rpc::*;
        match self {
            RunBenchmarks | ActivateCredential | StartJob | StopJob | ImportImage | RemoveImage
            | PullImage => true,
            GetInventory | GetBenchmarks | GetCapacity | WatchCapacity | WatchHostTelemetry
            | GetAttestation | GetEnrollment | GetJob | ListJobs | WatchJob | JobLogs
            | GetMarketLinks | GetReceipts | WatchReceipts => false,
        }
    }
}

/// The role table: whether `role` may call `rpc`.
pub fn allowed(role: Role, rpc: Rpc) -> bool {
    use Rpc::*;
    match role {
        Role::Admin => true,
        Role::Market => matches!(
            rpc,
            GetInventory
                | GetBenchmarks
                | GetCapacity
                | WatchCapacity
                | WatchHostTelemetry
                | GetAttestation
                | GetEnrollment
                | ActivateCredential
                | StartJob
                | StopJob
                | GetJob
                | ListJobs
                | WatchJob
                | JobLogs
                // Within the operator's `[images]` policy (allowed registries, size caps).
                | PullImage
                // Usage receipts of its jobs.
                | GetReceipts
                | WatchReceipts
        ),
        Role::Auditor => matches!(
            rpc,
            GetInventory | GetBenchmarks | GetAttestation | GetEnrollment | ActivateCredential
        ),
    }
}

/// Why no role could be read from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The listener is TLS but the connection carried no client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate is not valid DER X.509.
    #[error("client certificate is not parseable X.509: {0}")]
    BadCertificate(String),
    /// No `fog://role/...` URI SAN.
    #[error("client certificate has no {ROLE_URI_PREFIX}<role> URI SAN")]
    NoRole,
    /// A `fog://role/...` URI naming an unknown role.
    #[error("client certificate names unknown role {0:?}")]
    UnknownRole(String),
    /// Two different roles in one certificate.
    #[error("client certificate names more than one role ({0} and {1})")]
    ConflictingRoles(Role, Role),
}

/// Reads the role from a DER client certificate's URI SANs.
pub fn role_from_certificate(der: &[u8]) -> Result<Role, RoleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| RoleError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| RoleError::BadCertificate(e.to_string()))?;
    let uris = san
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    role_from_uris(uris)
}

/// The role named by a set of URIs: exactly one distinct `fog://role/<role>`.
pub fn role_from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Role, RoleError> {
    let mut found: Option<Role> = None;
    for uri in uris {
        let Some(name) = uri.strip_prefix(ROLE_URI_PREFIX) else {
            continue;
        };
        let role = Role::from_name(name).ok_or_else(|| RoleError::UnknownRole(name.to_owned()))?;
        match found {
            Some(previous) if previous != role => {
                return Err(RoleError::ConflictingRoles(previous, role))
            }
            _ => found = Some(role),
        }
    }
    found.ok_or(RoleError::NoRole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;
    use Rpc::*;

    #[test]
    fn role_table_exhaustive() {
        // (rpc, market, auditor, admin) — the table.
        let expected = [
            (GetInventory, true, true, true),
            (GetBenchmarks, true, true, true),
            (RunBenchmarks, false, false, true),
            (GetCapacity, true, false, true),
            (WatchCapacity, true, false, true),
            (WatchHostTelemetry, true, false, true),
            (GetAttestation, true, true, true),
            (GetEnrollment, true, true, true),
            (ActivateCredential, true, true, true),
            (StartJob, true, false, true),
            (StopJob, true, false, true),
            (GetJob, true, false, true),
            (ListJobs, true, false, true),
            (WatchJob, true, false, true),
            (JobLogs, true, false, true),
            (ImportImage, false, false, true),
            (RemoveImage, false, false, true),
            (GetMarketLinks, false, false, true),
            (PullImage, true, false, true),
            // Receipts name jobs and their usage, which an auditor does not read.
            (GetReceipts, true, false, true),
            (WatchReceipts, true, false, true),
        ];
        assert_eq!(expected.len(), Rpc::ALL.len());
        for (rpc, market, auditor, admin) in expected {
            assert_eq!(allowed(Market, rpc), market, "market {rpc:?}");
            assert_eq!(allowed(Auditor, rpc), auditor, "auditor {rpc:?}");
            assert_eq!(allowed(Admin, rpc), admin, "admin {rpc:?}");
        }
    }

    #[test]
    fn roles_from_uris() {
        assert_eq!(role_from_uris(["fog://role/market"]), Ok(Market));
        assert_eq!(
            role_from_uris(["https://x", "fog://role/admin", "fog://role/admin"]),
            Ok(Admin)
        );
        assert_eq!(role_from_uris(["https://x"]), Err(RoleError::NoRole));
        assert_eq!(
            role_from_uris(["fog://role/root"]),
            Err(RoleError::UnknownRole("root".into()))
        );
        assert_eq!(
            role_from_uris(["fog://role/auditor", "fog://role/admin"]),
            Err(RoleError::ConflictingRoles(Auditor, Admin))
        );
    }

    #[test]
    fn role_from_generated_certificates() {
        let certs = super::super::tls::DevCerts::generate().unwrap();
        for role in Role::ALL {
            let der = super::super::tls::pem_to_der(&certs.client(role).cert_pem).unwrap();
            assert_eq!(role_from_certificate(&der), Ok(role));
        }
        let server = super::super::tls::pem_to_der(&certs.server.cert_pem).unwrap();
        assert_eq!(role_from_certificate(&server), Err(RoleError::NoRole));
        assert!(matches!(
            role_from_certificate(b"not a certificate"),
            Err(RoleError::BadCertificate(_))
        ));
    }
}
