//! What a listener serves: the agent service for one [`Door`] (with its audit trail,
//! [`super::audit`]), standard health checking and
//! server reflection (v1 and v1alpha) over the agent's and the health service's descriptors.

use std::sync::Arc;

use fog_proto::v1::agent_server::AgentServer;
use tonic::service::Routes;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The standard health checking service.
pub type Health = HealthServer<HealthService>;

use super::{AgentService, Door, Shared};

/// The health checking service and its reporter, with the agent service marked serving.
pub async fn health() -> (HealthReporter, Health) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    reporter.set_serving::<AgentServer<AgentService>>().await;
    (reporter, service)
}

/// Marks the agent service not serving (the daemon is shutting down).
pub async fn set_not_serving(reporter: &HealthReporter) {
    reporter
        .set_not_serving::<AgentServer<AgentService>>()
        .await;
}

/// The routes of one listener: requests and responses up to `max_message_bytes`.
pub fn routes(
    shared: Arc<Shared>,
    door: Door,
    max_message_bytes: usize,
    health: Health,
) -> Result<Routes, tonic_reflection::server::Error> {
    let agent = AgentServer::new(AgentService::new(shared, door))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let agent = super::audit::Audited::new(agent, door);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fog_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    Ok(Routes::new(agent)
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha))
}
