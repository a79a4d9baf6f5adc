//! The receipt RPCs of `fog.agent.v1.Agent` (called from [`super::service`] after
//! authorization): GetReceipts builds the job's bundle on the blocking pool (it may sign pending
//! drafts and quote, which wait for the TPM); WatchReceipts is a bounded channel fed by one
//! producer task that sends the receipts signed so far, then each new one, and stops after the
//! job's `end` receipt (at once for a job that never ran), when the client goes away, or when
//! the daemon shuts down.

use std::sync::Arc;

use fog_proto::v1 as pb;
use fog_tpm::receipt::ReceiptKind;
use tokio::sync::{broadcast, mpsc};

use super::error::{blocking, ApiError};
use super::service::ResponseStream;
use super::{shutting_down, Shared};
use crate::receipts::{Issued, ReceiptError, Receipts};

/// Messages buffered per stream.
const STREAM_QUEUE: usize = 64;

impl From<ReceiptError> for ApiError {
    fn from(err: ReceiptError) -> Self {
        match err {
            ReceiptError::NotFound(_) => Self::NotFound(err.to_string()),
            ReceiptError::Disabled => Self::Unimplemented(err.to_string()),
            ReceiptError::Tpm(err) => err.into(),
            ReceiptError::State(_) | ReceiptError::Stored(_) => {
                Self::Internal(crate::inventory::error_chain(&err))
            }
        }
    }
}

fn receipts(shared: &Shared) -> Result<Arc<Receipts>, ApiError> {
    shared
        .receipts
        .clone()
        .ok_or_else(|| ReceiptError::Disabled.into())
}

/// A request's `job_id`, checked by StartJob's rule before any lookup.
fn job_id(id: &str) -> Result<String, ApiError> {
    crate::jobs::spec::check_job_id(id)?;
    Ok(id.to_owned())
}

/// The `SignedReceipt` JSON of a receipt, as in a bundle.
fn event(issued: &Issued) -> Result<pb::ReceiptEvent, ApiError> {
    let json = serde_json::to_vec(&issued.receipt)
        .map_err(|e| ApiError::Internal(format!("cannot serialize a receipt: {e}")))?;
    Ok(pb::ReceiptEvent {
        job_id: issued.job_id.clone(),
        seq: issued.seq,
        kind: kind_name(issued.kind).to_owned(),
        signed_receipt_json: json,
    })
}

fn kind_name(kind: ReceiptKind) -> &'static str {
    match kind {
        ReceiptKind::Start => "start",
        ReceiptKind::Periodic => "periodic",
        ReceiptKind::End => "end",
    }
}

/// GetReceipts.
pub async fn get_receipts(
    shared: &Shared,
    request: pb::GetReceiptsRequest,
) -> Result<pb::GetReceiptsResponse, ApiError> {
    let id = job_id(&request.job_id)?;
    let receipts = receipts(shared)?;
    let (bundle, count) = blocking("receipt bundle", move || receipts.bundle(&id)).await?;
    Ok(pb::GetReceiptsResponse {
        bundle_json: bundle.to_json(),
        receipts: u32::try_from(count).unwrap_or(u32::MAX),
    })
}

/// WatchReceipts.
pub async fn watch_receipts(
    shared: &Shared,
    request: pb::WatchReceiptsRequest,
) -> Result<ResponseStream<pb::ReceiptEvent>, ApiError> {
    let id = job_id(&request.job_id)?;
    let receipts = receipts(shared)?;
    let watched = id.clone();
    let (so_far, rx) = blocking("receipts", move || receipts.watch(&watched)).await?;
    let (tx, out) = mpsc::channel(STREAM_QUEUE);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        // The next seq to send: a receipt seen twice (signed while the history was read) or
        // out of order is skipped.
        let mut next = 0;
        for issued in &so_far {
            if !send(&tx, issued).await {
                return;
            }
            next = issued.seq + 1;
            if issued.kind == ReceiptKind::End {
                return;
            }
        }
        // A job that never ran gets no receipt.
        let Some(mut rx) = rx else {
            return;
        };
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(issued) if issued.job_id == id && issued.seq == next => {
                        if !send(&tx, &issued).await || issued.kind == ReceiptKind::End {
                            return;
                        }
                        next += 1;
                    }
                    Ok(_) => {}
                    // Too slow a reader: it learns it missed receipts (GetReceipts has them all).
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let msg = format!("the stream fell {n} receipts behind; read them with GetReceipts");
                        let _ = tx.send(Err(tonic::Status::data_loss(msg))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                () = shutting_down(shutdown.clone()) => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
}

async fn send(tx: &mpsc::Sender<Result<pb::ReceiptEvent, tonic::Status>>, issued: &Issued) -> bool {
    let msg = event(issued).map_err(tonic::Status::from);
    tx.send(msg).await.is_ok()
}
