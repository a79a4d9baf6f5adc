//! The API's one error type and its one conversion to a gRPC status.
//!
//! Every handler fails with an [`ApiError`]; domain errors (attestation, benchmarks, inventory,
//! telemetry, jobs, images) become one through `From`, request validation builds
//! [`ApiError::InvalidArgument`] naming the proto field, and `From<ApiError> for Status` is the
//! only place a `tonic::Status` is made from an error. Internal failures are logged here, once.

use tonic::Status;

use crate::attest::AttestError;
use crate::bench::BenchmarkError;
use crate::image::ImageError;
use crate::inventory::cache::InventoryError;
use crate::inventory::error_chain as chain;
use crate::jobs::JobError;
use crate::telemetry::HubError;

/// Why a request failed, by gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A request field is wrong.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, as named in the proto (`spec.resources.cpu_millis`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A third party (an image registry) refused the credentials the request carried.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the state of the host refuses it now.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Capacity, a quota or a subscriber limit is used up.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (the TPM, a running benchmark, a closing hub) cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// This agent was started without the feature (jobs, images).
    #[error("{0}")]
    Unimplemented(String),
    /// The agent failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid `field`.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Longest status message: the message travels in a response header (`grpc-message`), and
/// whatever a handler put in it (a path, a quoted value), a reply stays small.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `text` cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary, saying so.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE - 16;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("... (cut)");
    }
    text
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let text = bounded(err.to_string());
        match err {
            ApiError::InvalidArgument { .. } => Status::invalid_argument(text),
            ApiError::NotFound(_) => Status::not_found(text),
            ApiError::AlreadyExists(_) => Status::already_exists(text),
            ApiError::PermissionDenied(_) => Status::permission_denied(text),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(text),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(text),
            ApiError::Unavailable(_) => Status::unavailable(text),
            ApiError::Unimplemented(_) => Status::unimplemented(text),
            ApiError::Internal(_) => {
                tracing::warn!(error = %text, "request failed");
                Status::internal(text)
            }
        }
    }
}

/// Runs `call` on the blocking pool; a panic there is an internal error naming `what`.
pub async fn blocking<T, E>(
    what: &'static str,
    call: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, what, "blocking call panicked");
            ApiError::Internal(format!("{what} failed unexpectedly"))
        })?
        .map_err(Into::into)
}

impl From<AttestError> for ApiError {
    fn from(err: AttestError) -> Self {
        match err {
            AttestError::TpmUnreachable(msg) => Self::Unavailable(msg),
            AttestError::InvalidArgument { field, message } => Self::invalid(field, message),
            AttestError::Payload(_) | AttestError::Failed(_) => Self::Internal(chain(&err)),
        }
    }
}

impl From<BenchmarkError> for ApiError {
    fn from(err: BenchmarkError) -> Self {
        match err {
            BenchmarkError::RunInProgress => Self::Unavailable(err.to_string()),
            BenchmarkError::UnknownId(id) => {
                Self::invalid("benchmark_ids", format!("unknown benchmark id {id:?}"))
            }
            BenchmarkError::Failed(msg) => Self::Internal(msg),
        }
    }
}

impl From<InventoryError> for ApiError {
    fn from(err: InventoryError) -> Self {
        Self::Internal(chain(&err))
    }
}

impl From<HubError> for ApiError {
    fn from(err: HubError) -> Self {
        match err {
            HubError::TooManySubscribers(_) => Self::ResourceExhausted(err.to_string()),
            HubError::Closed => Self::Unavailable(err.to_string()),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(err: JobError) -> Self {
        let text = chain(&err);
        match err {
            JobError::InvalidArgument { field, message } => Self::invalid(field, message),
            JobError::ResourceExhausted { .. } => Self::ResourceExhausted(text),
            JobError::NotFound(_) => Self::NotFound(text),
            JobError::AlreadyExists(_) => Self::AlreadyExists(text),
            JobError::Gpu(_) | JobError::NetworkUnavailable(_) => Self::FailedPrecondition(text),
            _ => Self::Internal(text),
        }
    }
}

/// An image-store error of a request whose `field` named the image or the layout: the caller's
/// mistake is INVALID_ARGUMENT on that field, an image in use FAILED_PRECONDITION, a full disk
/// or an import past its `[images]` limits RESOURCE_EXHAUSTED, a cancelled import UNAVAILABLE,
/// a broken store INTERNAL; a pull's registry outside `[images]` FAILED_PRECONDITION, refused
/// registry credentials PERMISSION_DENIED, an unknown repository, tag or digest NOT_FOUND, an
/// unreachable or failing registry UNAVAILABLE, a pull past its size caps RESOURCE_EXHAUSTED.
pub fn image_error(field: &str, err: ImageError) -> ApiError {
    let text = chain(&err);
    match &err {
        ImageError::InUse { .. } => ApiError::FailedPrecondition(format!("{field}: {text}")),
        ImageError::CorruptStore { .. } => ApiError::Internal(text),
        ImageError::OverLimit { .. } | ImageError::NoSpace { .. } => {
            ApiError::ResourceExhausted(format!("image store: {text}"))
        }
        ImageError::Io { source, .. } | ImageError::Layer { source, .. }
            if is_out_of_space(source) =>
        {
            ApiError::ResourceExhausted(format!("image store: {text}"))
        }
        ImageError::Cancelled => ApiError::Unavailable(text),
        ImageError::RegistryNotAllowed { .. } => ApiError::FailedPrecondition(text),
        ImageError::RegistryAuth { .. } => ApiError::PermissionDenied(text),
        ImageError::NotInRegistry { .. } => ApiError::NotFound(text),
        ImageError::RegistryUnavailable { .. } => ApiError::Unavailable(text),
        ImageError::TooLarge { .. } => ApiError::ResourceExhausted(format!("image store: {text}")),
        _ => ApiError::invalid(field, text),
    }
}

fn is_out_of_space(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_its_code() {
        let cases = [
            (
                ApiError::invalid("nonce", "short"),
                tonic::Code::InvalidArgument,
            ),
            (ApiError::NotFound("x".into()), tonic::Code::NotFound),
            (
                ApiError::AlreadyExists("x".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                ApiError::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                ApiError::ResourceExhausted("x".into()),
                tonic::Code::ResourceExhausted,
            ),
            (ApiError::Unavailable("x".into()), tonic::Code::Unavailable),
            (
                ApiError::Unimplemented("x".into()),
                tonic::Code::Unimplemented,
            ),
            (ApiError::Internal("x".into()), tonic::Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
        let status = Status::from(ApiError::invalid("nonce", "16 to 64 bytes"));
        assert_eq!(status.message(), "nonce: 16 to 64 bytes");
    }

    #[test]
    fn job_errors_map_to_codes_naming_the_field() {
        let status = Status::from(ApiError::from(JobError::InvalidArgument {
            field: "resources.memory_bytes".into(),
            message: "must be positive".into(),
        }));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "resources.memory_bytes: must be positive");
        let status = Status::from(ApiError::from(JobError::ResourceExhausted {
            resource: "resources.cpu_millicores".into(),
            message: "requested 9, 1 free".into(),
        }));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with("resources.cpu_millicores"));
        let status = Status::from(ApiError::from(JobError::NotFound("x".into())));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_not_the_callers_fault() {
        let full = ImageError::Io {
            path: "/var/lib/fog-agent/images/blobs".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(matches!(
            image_error("layout_dir", full),
            ApiError::ResourceExhausted(_)
        ));
        let missing = ImageError::Io {
            path: "/nowhere/index.json".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(matches!(
            image_error("layout_dir", missing),
            ApiError::InvalidArgument { .. }
        ));
    }

    #[test]
    fn a_disk_filled_while_unpacking_or_a_limit_is_resource_exhausted() {
        let full = ImageError::Layer {
            layer: "sha256:00".into(),
            context: "bin/big: writing the file".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(matches!(
            image_error("layout_dir", full),
            ApiError::ResourceExhausted(_)
        ));
        let quota = ImageError::Layer {
            layer: "sha256:00".into(),
            context: "bin/big: writing the file".into(),
            source: std::io::Error::from_raw_os_error(libc::EDQUOT),
        };
        assert!(matches!(
            image_error("layout_dir", quota),
            ApiError::ResourceExhausted(_)
        ));
        let over = ImageError::OverLimit {
            layer: "sha256:00".into(),
            what: "entries",
            max: 16,
            key: "max_entries",
        };
        let status = Status::from(image_error("layout_dir", over));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("images.max_entries"),
            "{status:?}"
        );
        let bad_tar = ImageError::Layer {
            layer: "sha256:00".into(),
            context: "reading the tar".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        };
        assert!(matches!(
            image_error("layout_dir", bad_tar),
            ApiError::InvalidArgument { .. }
        ));
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        let status = Status::from(ApiError::NotFound("é".repeat(10_000)));
        assert!(status.message().len() <= MAX_STATUS_MESSAGE);
        assert!(status.message().ends_with("... (cut)"));
        let short = Status::from(ApiError::NotFound("x".into()));
        assert_eq!(short.message(), "x");
    }

    #[test]
    fn causes_are_printed_once() {
        let err = ImageError::Io {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = chain(&err);
        assert_eq!(text.matches("not found").count(), 1, "{text}");
    }
}
