//! The `fog.agent.v1.Agent` service: authorization, request validation, and answering from the
//! daemon's shared state (inventory cache, capacity ledger, telemetry hub, attestor, benchmarks,
//! jobs).

use std::pin::Pin;
use std::sync::Arc;

use fog_proto::v1 as pb;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::auth::{self, Role, Rpc};
use super::error::{blocking, ApiError};
use super::{convert, job_service, receipt_service, shutting_down, Door, Shared};

/// A boxed server stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service as served on one listener.
#[derive(Debug, Clone)]
pub struct AgentService {
    shared: Arc<Shared>,
    door: Door,
}

impl AgentService {
    /// The service for a listener of kind `door`.
    pub fn new(shared: Arc<Shared>, door: Door) -> Self {
        Self { shared, door }
    }

    /// The caller's role, checked against the role table for `rpc`.
    fn authorize<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<Role, Status> {
        let role = match self.door {
            Door::LocalAdmin => Role::Admin,
            Door::Mtls => {
                let certs = request.peer_certs().ok_or_else(|| {
                    Status::unauthenticated(auth::RoleError::NoCertificate.to_string())
                })?;
                let leaf = certs.first().ok_or_else(|| {
                    Status::unauthenticated(auth::RoleError::NoCertificate.to_string())
                })?;
                auth::role_from_certificate(leaf)
                    .map_err(|err| Status::permission_denied(err.to_string()))?
            }
            Door::Tunnel => match request.extensions().get::<super::TunnelCaller>() {
                Some(caller) if caller.role != Role::Admin => caller.role,
                _ => return Err(Status::unauthenticated("no market identity on this tunnel")),
            },
        };
        if auth::allowed(role, rpc) {
            Ok(role)
        } else {
            tracing::info!(role = %role, rpc = ?rpc, "rpc denied");
            Err(Status::permission_denied(format!(
                "role {role} may not call {rpc:?}"
            )))
        }
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_inventory(
        &self,
        request: Request<pb::GetInventoryRequest>,
    ) -> Result<Response<pb::GetInventoryResponse>, Status> {
        self.authorize(&request, Rpc::GetInventory)?;
        let cached = self
            .shared
            .inventory
            .get(request.get_ref().refresh)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetInventoryResponse {
            inventory: Some(convert::inventory(&cached.inventory)),
            inventory_json: cached.json.clone(),
        }))
    }

    async fn get_benchmarks(
        &self,
        request: Request<pb::GetBenchmarksRequest>,
    ) -> Result<Response<pb::GetBenchmarksResponse>, Status> {
        self.authorize(&request, Rpc::GetBenchmarks)?;
        let benchmarks = self.shared.benchmarks.clone();
        let report = blocking("benchmark cache", move || benchmarks.cached()).await?;
        Ok(Response::new(pb::GetBenchmarksResponse {
            report: Some(convert::benchmark_report(&report)),
        }))
    }

    type RunBenchmarksStream = ResponseStream<pb::RunBenchmarksResponse>;

    async fn run_benchmarks(
        &self,
        request: Request<pb::RunBenchmarksRequest>,
    ) -> Result<Response<Self::RunBenchmarksStream>, Status> {
        self.authorize(&request, Rpc::RunBenchmarks)?;
        let ids = convert::benchmark_ids(&request.get_ref().benchmark_ids)?;
        let (tx, rx) = mpsc::channel(64);
        let benchmarks = self.shared.benchmarks.clone();
        tokio::task::spawn_blocking(move || {
            let mut progress = |event: crate::bench::BenchmarkProgress| {
                let msg = pb::RunBenchmarksResponse {
                    event: Some(pb::run_benchmarks_response::Event::Progress(
                        convert::benchmark_progress(&event),
                    )),
                };
                tx.blocking_send(Ok(msg)).is_ok()
            };
            let last = match benchmarks.run(&ids, &mut progress) {
                Ok(report) => Ok(pb::RunBenchmarksResponse {
                    event: Some(pb::run_benchmarks_response::Event::Report(
                        convert::benchmark_report(&report),
                    )),
                }),
                Err(err) => Err(Status::from(ApiError::from(err))),
            };
            // The caller may be gone; nothing to do then.
            let _ = tx.blocking_send(last);
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        self.authorize(&request, Rpc::GetCapacity)?;
        Ok(Response::new(pb::GetCapacityResponse {
            capacity: Some(convert::capacity(&self.shared.capacity.current())),
        }))
    }

    type WatchCapacityStream = ResponseStream<pb::WatchCapacityResponse>;

    async fn watch_capacity(
        &self,
        request: Request<pb::WatchCapacityRequest>,
    ) -> Result<Response<Self::WatchCapacityStream>, Status> {
        self.authorize(&request, Rpc::WatchCapacity)?;
        let mut rx = self.shared.capacity.subscribe();
        // The current state first.
        rx.mark_changed();
        let stream =
            futures_util::stream::unfold((rx, self.shutdown()), |(mut rx, shutdown)| async move {
                tokio::select! {
                    changed = rx.changed() => {
                        changed.ok()?;
                        let snapshot = rx.borrow_and_update().clone();
                        let msg = pb::WatchCapacityResponse {
                            capacity: Some(convert::capacity(&snapshot)),
                        };
                        Some((Ok(msg), (rx, shutdown)))
                    }
                    () = shutting_down(shutdown.clone()) => None,
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchHostTelemetryStream = ResponseStream<pb::WatchHostTelemetryResponse>;

    async fn watch_host_telemetry(
        &self,
        request: Request<pb::WatchHostTelemetryRequest>,
    ) -> Result<Response<Self::WatchHostTelemetryStream>, Status> {
        self.authorize(&request, Rpc::WatchHostTelemetry)?;
        let hub = &self.shared.telemetry;
        let interval = convert::telemetry_interval(request.get_ref(), hub.min_interval())?;
        let subscription = hub.subscribe(interval).map_err(ApiError::from)?;
        let stream = futures_util::stream::unfold(subscription, |subscription| async move {
            let delivery = subscription.recv().await?;
            let msg = pb::WatchHostTelemetryResponse {
                sample: Some(convert::host_sample(&delivery.sample)),
                gap_count: delivery.gap_count,
            };
            Some((Ok(msg), subscription))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_attestation(
        &self,
        request: Request<pb::GetAttestationRequest>,
    ) -> Result<Response<pb::GetAttestationResponse>, Status> {
        self.authorize(&request, Rpc::GetAttestation)?;
        let body = request.into_inner();
        let nonce = convert::nonce("nonce", &body.nonce)?;
        let selection = convert::pcr_selection(body.pcr_selection.as_ref())?;
        // The payload attests the inventory as it is now (collected again unless the cached one
        // is younger than the inventory cache's refresh floor).
        let inventory = self
            .shared
            .inventory
            .get(true)
            .await
            .map_err(ApiError::from)?;
        let attestor = self.shared.attestation.clone();
        let report = blocking("attestation", move || {
            attestor.attest(&nonce, &selection, &inventory.inventory)
        })
        .await?;
        Ok(Response::new(pb::GetAttestationResponse {
            report: Some(convert::attestation_report(&report)),
        }))
    }

    async fn get_enrollment(
        &self,
        request: Request<pb::GetEnrollmentRequest>,
    ) -> Result<Response<pb::GetEnrollmentResponse>, Status> {
        self.authorize(&request, Rpc::GetEnrollment)?;
        let attestor = self.shared.attestation.clone();
        let enrollment = blocking("enrollment", move || attestor.enrollment()).await?;
        Ok(Response::new(pb::GetEnrollmentResponse {
            enrollment: Some(convert::enrollment(&enrollment)),
        }))
    }

    async fn activate_credential(
        &self,
        request: Request<pb::ActivateCredentialRequest>,
    ) -> Result<Response<pb::ActivateCredentialResponse>, Status> {
        self.authorize(&request, Rpc::ActivateCredential)?;
        let activation = convert::activation(request.get_ref())?;
        let attestor = self.shared.attestation.clone();
        let proof = blocking("credential activation", move || {
            attestor.activate_credential(&activation)
        })
        .await?;
        Ok(Response::new(pb::ActivateCredentialResponse {
            proof: proof.proof,
            host_id: proof.host_id,
        }))
    }

    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::StartJobResponse>, Status> {
        self.authorize(&request, Rpc::StartJob)?;
        job_service::start_job(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn stop_job(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::StopJobResponse>, Status> {
        self.authorize(&request, Rpc::StopJob)?;
        job_service::stop_job(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        self.authorize(&request, Rpc::GetJob)?;
        job_service::get_job(&self.shared, request.get_ref())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.authorize(&request, Rpc::ListJobs)?;
        job_service::list_jobs(&self.shared, request.get_ref())
            .map(Response::new)
            .map_err(Status::from)
    }

    type WatchJobStream = ResponseStream<pb::WatchJobResponse>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.authorize(&request, Rpc::WatchJob)?;
        job_service::watch_job(&self.shared, request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    type JobLogsStream = ResponseStream<pb::JobLogsResponse>;

    async fn job_logs(
        &self,
        request: Request<pb::JobLogsRequest>,
    ) -> Result<Response<Self::JobLogsStream>, Status> {
        self.authorize(&request, Rpc::JobLogs)?;
        job_service::job_logs(&self.shared, request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn import_image(
        &self,
        request: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        self.authorize(&request, Rpc::ImportImage)?;
        job_service::import_image(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn remove_image(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        self.authorize(&request, Rpc::RemoveImage)?;
        job_service::remove_image(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type PullImageStream = ResponseStream<pb::PullImageResponse>;

    async fn pull_image(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        self.authorize(&request, Rpc::PullImage)?;
        job_service::pull_image(&self.shared, request.into_inner())
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn get_market_links(
        &self,
        request: Request<pb::GetMarketLinksRequest>,
    ) -> Result<Response<pb::GetMarketLinksResponse>, Status> {
        self.authorize(&request, Rpc::GetMarketLinks)?;
        let links = self
            .shared
            .market
            .get()
            .map(|read| read())
            .unwrap_or_default();
        Ok(Response::new(pb::GetMarketLinksResponse {
            links: links.iter().map(convert::market_link).collect(),
        }))
    }

    async fn get_receipts(
        &self,
        request: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        self.authorize(&request, Rpc::GetReceipts)?;
        receipt_service::get_receipts(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type WatchReceiptsStream = ResponseStream<pb::ReceiptEvent>;

    async fn watch_receipts(
        &self,
        request: Request<pb::WatchReceiptsRequest>,
    ) -> Result<Response<Self::WatchReceiptsStream>, Status> {
        self.authorize(&request, Rpc::WatchReceipts)?;
        receipt_service::watch_receipts(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}
