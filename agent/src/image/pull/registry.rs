//! One pull's registry client (`oci-client` over rustls, the policy's protocol and CA): the
//! manifest (an index resolved to the host's platform, a pinned digest checked), blob streams,
//! and registry errors as [`ImageError`]s.

use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, SizedStream,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use super::{manifest_descriptor, Credentials, PullPolicy, ResolvedManifest, MAX_MANIFEST_BYTES};
use crate::image::{host_goarch, ImageError};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED: [&str; 4] = [OCI_MANIFEST, super::DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// Parses a pull reference (`INVALID_ARGUMENT` on `reference` when malformed).
pub(super) fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    let bad = |reason: String| ImageError::BadReference {
        reference: reference.to_owned(),
        reason,
    };
    if reference.is_empty() {
        return Err(bad("empty".to_owned()));
    }
    let parsed: Reference = reference.parse().map_err(|e| bad(format!("{e}")))?;
    if let Some(digest) = parsed.digest() {
        let ok = digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(bad(format!(
                "digest {digest:?} is not sha256:<64 hex digits>"
            )));
        }
    }
    Ok(parsed)
}

/// A registry client for one pull (its credentials die with it).
pub(super) struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("reference", &self.reference.whole())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(super) fn connect(
        policy: &PullPolicy,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Registry, ImageError> {
        // reqwest's rustls needs a process-wide provider; the agent uses ring everywhere.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut extra_root_certificates = Vec::new();
        if let Some(ca) = &policy.ca_file {
            let pem = std::fs::read(ca).map_err(|e| ImageError::io(ca, e))?;
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem,
            });
        }
        let config = ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                policy.insecure_registries.clone(),
            ),
            extra_root_certificates,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(15)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            user_agent: concat!("fog-agent/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry {
            client: Client::new(config),
            reference: reference.clone(),
            auth,
        })
    }

    pub(super) fn registry(&self) -> &str {
        self.reference.registry()
    }

    /// The image manifest: by tag or digest; an index resolved to linux/<host arch>. A pinned
    /// digest must be what the bytes hash to.
    pub(super) async fn resolve_manifest(&self) -> Result<ResolvedManifest, ImageError> {
        let (bytes, media_type) = self.fetch_manifest(&self.reference).await?;
        let desc = manifest_descriptor(&bytes, None)?;
        if let Some(pinned) = self.reference.digest() {
            if desc.digest().to_string() != pinned {
                return Err(ImageError::DigestMismatch {
                    digest: pinned.to_owned(),
                    actual: desc.digest().to_string(),
                });
            }
        }
        if is_index(&bytes, media_type.as_deref()) {
            let index =
                ImageIndex::from_reader(&bytes[..]).map_err(|e| ImageError::BadDocument {
                    what: format!("index {}", desc.digest()),
                    reason: e.to_string(),
                })?;
            let chosen = choose_platform(&index).ok_or_else(|| ImageError::Platform {
                field: "index platform",
                value: platforms(&index),
                expected: format!("linux/{}", host_goarch()),
            })?;
            let by_digest = Reference::with_digest(
                self.reference.registry().to_owned(),
                self.reference.repository().to_owned(),
                chosen.digest().to_string(),
            );
            let (bytes, media_type) = self.fetch_manifest(&by_digest).await?;
            let desc = manifest_descriptor(&bytes, media_type.as_deref())?;
            if desc.digest() != chosen.digest() {
                return Err(ImageError::DigestMismatch {
                    digest: chosen.digest().to_string(),
                    actual: desc.digest().to_string(),
                });
            }
            return parse_manifest(bytes, desc);
        }
        let desc = manifest_descriptor(&bytes, media_type.as_deref())?;
        parse_manifest(bytes, desc)
    }

    async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Option<String>), ImageError> {
        let (bytes, _digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &ACCEPTED)
            .await
            .map_err(|e| self.error(e))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ImageError::BadDocument {
                what: format!("manifest of {}", reference.whole()),
                reason: format!("larger than the {MAX_MANIFEST_BYTES}-byte limit"),
            });
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned));
        Ok((bytes.to_vec(), media_type))
    }

    /// The blob's bytes from `offset` on (`Partial`), or the whole blob (`Full`: from 0, when
    /// `offset` is 0 or the registry ignores the range).
    pub(super) async fn blob(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<(SizedStream, bool), ImageError> {
        let oci = OciDescriptor {
            media_type: desc.media_type().to_string(),
            digest: desc.digest().to_string(),
            size: i64::try_from(desc.size()).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        if offset == 0 {
            let stream = self
                .client
                .pull_blob_stream(&self.reference, &oci)
                .await
                .map_err(|e| self.error(e))?;
            return Ok((stream, false));
        }
        match self
            .client
            .pull_blob_stream_partial(
                &self.reference,
                &oci,
                offset,
                Some(desc.size().saturating_sub(offset)),
            )
            .await
            .map_err(|e| self.error(e))?
        {
            BlobResponse::Full(stream) => Ok((stream, false)),
            BlobResponse::Partial(stream) => Ok((stream, true)),
        }
    }

    /// A registry error as an image error: refused credentials, not found, or unavailable.
    pub(super) fn error(&self, err: OciDistributionError) -> ImageError {
        let registry = self.registry().to_owned();
        let reference = self.reference.whole();
        let unavailable = |message: String| ImageError::RegistryUnavailable {
            registry: registry.clone(),
            message,
        };
        match &err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => ImageError::RegistryAuth {
                registry,
                message: err.to_string(),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotInRegistry {
                reference,
                message: err.to_string(),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let message = envelope.to_string();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    ImageError::RegistryAuth { registry, message }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::ManifestBlobUnknown
                    )
                }) {
                    ImageError::NotInRegistry { reference, message }
                } else {
                    unavailable(message)
                }
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => ImageError::RegistryAuth {
                registry,
                message: err.to_string(),
            },
            OciDistributionError::ServerError { code: 404, .. } => ImageError::NotInRegistry {
                reference,
                message: err.to_string(),
            },
            _ => unavailable(error_chain(&err)),
        }
    }
}

fn is_index(bytes: &[u8], media_type: Option<&str>) -> bool {
    match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(_) => false,
        // An OCI index may omit its mediaType: it has `manifests`, an image manifest does not.
        None => serde_json::from_slice::<serde_json::Value>(bytes)
            .is_ok_and(|v| v.get("manifests").is_some()),
    }
}

fn choose_platform(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|d| {
        let is_manifest = matches!(d.media_type(), MediaType::ImageManifest)
            || d.media_type().to_string() == super::DOCKER_MANIFEST;
        is_manifest
            && d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == host_goarch()
            })
    })
}

fn platforms(index: &ImageIndex) -> String {
    let all: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    all.join(", ")
}

fn parse_manifest(bytes: Vec<u8>, descriptor: Descriptor) -> Result<ResolvedManifest, ImageError> {
    let manifest = crate::image::layout::parse_manifest(&bytes, &descriptor)?;
    Ok(ResolvedManifest {
        bytes,
        descriptor,
        manifest,
    })
}

/// An error and its sources, `: `-separated (a connection error says why only in its sources).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
