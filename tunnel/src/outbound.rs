//! The frames the agent sends on a tunnel: one never-ending stream (the tunnel's request body)
//! fed by two queues. Control frames (settings, window updates, refusals) come first and never
//! wait, so the read loop never blocks; a stream's own frames (headers, data, close) share one
//! bounded queue in order, so a slow market slows the handlers, not the read loop.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use fog_proto::grpctunnel::v1::ServerToClient;
use futures_util::Stream;
use tokio::sync::mpsc;

/// Stream frames queued at most (about 1 MiB of 16 KiB chunks across all streams).
const DATA_QUEUE: usize = 64;

/// Control frames queued at most before the market is taken as not reading.
pub const CONTROL_QUEUE_MAX: usize = 65_536;

/// The sending side, cloned by every stream's task.
#[derive(Debug, Clone)]
pub struct OutboundTx {
    control: mpsc::UnboundedSender<ServerToClient>,
    control_queued: Arc<AtomicUsize>,
    data: mpsc::Sender<ServerToClient>,
}

/// The tunnel is gone (the call ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelGone;

impl OutboundTx {
    /// Queues a control frame without waiting; false if the market has left
    /// [`CONTROL_QUEUE_MAX`] of them unread or the tunnel is gone.
    pub fn control(&self, frame: ServerToClient) -> bool {
        if self.control_queued.fetch_add(1, Ordering::AcqRel) >= CONTROL_QUEUE_MAX {
            self.control_queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.control.send(frame).is_ok()
    }

    /// Queues one of a stream's frames, waiting for room.
    pub async fn send(&self, frame: ServerToClient) -> Result<(), TunnelGone> {
        self.data.send(frame).await.map_err(|_| TunnelGone)
    }
}

/// The tunnel's outbound frames, control first; never ends (a tunnel is closed by resetting
/// the call, never by half-closing it).
#[derive(Debug)]
pub struct OutboundStream {
    control: mpsc::UnboundedReceiver<ServerToClient>,
    control_queued: Arc<AtomicUsize>,
    data: mpsc::Receiver<ServerToClient>,
}

/// A connected sender and stream.
pub fn outbound() -> (OutboundTx, OutboundStream) {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        OutboundTx {
            control: control_tx,
            control_queued: queued.clone(),
            data: data_tx,
        },
        OutboundStream {
            control: control_rx,
            control_queued: queued,
            data: data_rx,
        },
    )
}

impl Stream for OutboundStream {
    type Item = ServerToClient;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(Some(frame)) = self.control.poll_recv(cx) {
            self.control_queued.fetch_sub(1, Ordering::AcqRel);
            return Poll::Ready(Some(frame));
        }
        match self.data.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame)),
            // Closed queues leave the stream pending: the call is reset by dropping it.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}
