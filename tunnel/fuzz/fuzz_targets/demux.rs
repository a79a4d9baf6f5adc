//! The tunnel's inbound frame state machine: any sequence of frames a market can send (ids in
//! any order, envelopes of any size, chunks beyond windows, frames after close, undecodable
//! frames), interleaved with handlers finishing and consuming data, never panics; it never holds
//! more streams than the cap, and no stream's receive credit grows beyond what it started with.
#![no_main]
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fog_proto::grpctunnel::v1::{client_to_server::Frame, ClientToServer, MessageData, NewStream};
use fog_tunnel::demux::{Demux, DemuxLimits, Event, INITIAL_WINDOW};
use fog_tunnel::MethodTable;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const METHODS: [&str; 5] = [
    "fog.agent.v1.Agent/GetCapacity",
    "/fog.agent.v1.Agent/WatchHostTelemetry",
    "fog.agent.v1.Agent/Nope",
    "nonsense",
    "",
];
const MAX_STREAMS: usize = 4;
const MAX_MESSAGE: u32 = 100_000;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.byte()?, self.byte()?, self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self, max: usize) -> Option<&[u8]> {
        let len = (usize::from(self.byte()?) * 300).min(max).min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }
}

fn methods() -> Arc<MethodTable> {
    static METHODS_TABLE: std::sync::OnceLock<Arc<MethodTable>> = std::sync::OnceLock::new();
    METHODS_TABLE
        .get_or_init(|| {
            Arc::new(MethodTable::from_descriptor_sets(&[fog_proto::FILE_DESCRIPTOR_SET]).unwrap())
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut demux = Demux::new(
        DemuxLimits {
            max_streams: MAX_STREAMS,
            max_message_bytes: MAX_MESSAGE,
        },
        methods(),
    );
    let mut open: Vec<(i64, Arc<fog_tunnel::flow::Credit>, u64)> = Vec::new();
    let mut last_id = -1i64;
    let mut now = Instant::now();
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        let pick = input.byte().unwrap_or(0);
        // Ids near the last one: new, duplicate, lower, never opened.
        let id = last_id + i64::from(pick % 5) - 2;
        now += Duration::from_millis(u64::from(pick));
        let frame = match op % 9 {
            0 => Frame::NewStream(NewStream {
                method_name: METHODS[usize::from(pick) % METHODS.len()].into(),
                request_headers: None,
                initial_window_size: input.u32().unwrap_or(0),
                protocol_revision: i32::from(input.byte().unwrap_or(0) % 3),
            }),
            1 => Frame::RequestMessage(MessageData {
                size: input.u32().unwrap_or(0) % (MAX_MESSAGE * 2),
                data: Bytes::copy_from_slice(input.bytes(80_000).unwrap_or_default()),
            }),
            2 => Frame::MoreRequestData(Bytes::copy_from_slice(input.bytes(80_000).unwrap_or_default())),
            3 => Frame::HalfClose(()),
            4 => Frame::Cancel(()),
            5 => Frame::WindowUpdate(input.u32().unwrap_or(0)),
            6 => {
                // A handler finished.
                if let Some(i) = (!open.is_empty()).then(|| usize::from(pick) % open.len()) {
                    let (id, _, _) = open.swap_remove(i);
                    demux.closed(id);
                }
                continue;
            }
            7 => {
                // A handler consumed what it was given back (never more than was taken).
                for (_, credit, initial) in &open {
                    let taken = initial - credit.left();
                    credit.give(taken.min(u64::from(pick) * 1000));
                }
                continue;
            }
            _ => {
                // Whatever bytes a market sends, decoded as a frame.
                let raw = input.bytes(4_000).unwrap_or_default();
                match ClientToServer::decode(raw) {
                    Ok(frame) => {
                        let _ = feed(&mut demux, frame, now, &mut open, &mut last_id);
                    }
                    Err(_) => {}
                }
                continue;
            }
        };
        let frame = ClientToServer {
            stream_id: id,
            frame: Some(frame),
        };
        if feed(&mut demux, frame, now, &mut open, &mut last_id).is_err() {
            // A protocol error ends the tunnel.
            return;
        }
        assert!(demux.open_streams() <= MAX_STREAMS);
        for (_, credit, initial) in &open {
            assert!(credit.left() <= *initial);
        }
        let _ = demux.idle_since(now);
    }
});

fn feed(
    demux: &mut Demux,
    frame: ClientToServer,
    now: Instant,
    open: &mut Vec<(i64, Arc<fog_tunnel::flow::Credit>, u64)>,
    last_id: &mut i64,
) -> Result<(), ()> {
    let id = frame.stream_id;
    let is_new = matches!(frame.frame, Some(Frame::NewStream(_)));
    match demux.on_frame(frame, now) {
        Err(_) => Err(()),
        Ok(event) => {
            if is_new {
                *last_id = id;
            }
            if let Event::Open(stream) = event {
                let initial = match stream.revision {
                    fog_tunnel::demux::Revision::One => u64::from(INITIAL_WINDOW),
                    fog_tunnel::demux::Revision::Zero => stream.credit.left(),
                };
                assert!(stream.credit.left() <= initial);
                open.push((stream.id, stream.credit, initial));
            }
            Ok(())
        }
    }
}
