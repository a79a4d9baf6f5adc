use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fog_proto::grpctunnel::v1::{client_to_server::Frame, ClientToServer, MessageData, NewStream};
use tonic::Code;

use super::*;

const FOG_DESCRIPTORS: &[u8] = fog_proto::FILE_DESCRIPTOR_SET;

fn demux(max_streams: usize, max_message_bytes: u32) -> Demux {
    let methods = MethodTable::from_descriptor_sets(&[FOG_DESCRIPTORS]).unwrap();
    Demux::new(
        DemuxLimits {
            max_streams,
            max_message_bytes,
        },
        Arc::new(methods),
    )
}

fn frame(id: i64, frame: Frame) -> ClientToServer {
    ClientToServer {
        stream_id: id,
        frame: Some(frame),
    }
}

fn open(id: i64, method: &str, revision: i32) -> ClientToServer {
    frame(
        id,
        Frame::NewStream(NewStream {
            method_name: method.into(),
            request_headers: None,
            initial_window_size: 65_536,
            protocol_revision: revision,
        }),
    )
}

fn message(id: i64, size: u32, len: usize) -> ClientToServer {
    frame(
        id,
        Frame::RequestMessage(MessageData {
            size,
            data: Bytes::from(vec![0; len]),
        }),
    )
}

fn more(id: i64, len: usize) -> ClientToServer {
    frame(id, Frame::MoreRequestData(Bytes::from(vec![0; len])))
}

const CAPACITY: &str = "fog.agent.v1.Agent/GetCapacity";

fn failure(event: Event) -> (Code, String) {
    match event {
        Event::Fail { failure, .. } | Event::Refuse { failure, .. } => {
            (failure.code, failure.message)
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn ids_must_increase_and_unknown_ids_end_the_tunnel() {
    let now = Instant::now();
    let mut d = demux(8, 1 << 20);
    assert!(matches!(
        d.on_frame(open(1, CAPACITY, 1), now),
        Ok(Event::Open(_))
    ));
    assert!(
        d.on_frame(open(1, CAPACITY, 1), now).is_err(),
        "duplicate id"
    );
    let mut d = demux(8, 1 << 20);
    d.on_frame(open(5, CAPACITY, 1), now).unwrap();
    assert!(d.on_frame(open(3, CAPACITY, 1), now).is_err(), "lower id");
    let mut d = demux(8, 1 << 20);
    d.on_frame(open(0, CAPACITY, 1), now).unwrap();
    let err = d.on_frame(message(9, 1, 1), now).unwrap_err();
    assert!(err.0.contains("never opened"), "{err}");
    // A closed stream's late frames are ignored.
    d.closed(0);
    assert!(matches!(
        d.on_frame(message(0, 1, 1), now),
        Ok(Event::Ignored)
    ));
    assert!(matches!(
        d.on_frame(frame(0, Frame::HalfClose(())), now),
        Ok(Event::Ignored)
    ));
}

#[test]
fn unknown_revisions_the_cap_and_draining_refuse_the_stream_only() {
    let now = Instant::now();
    let mut d = demux(1, 1 << 20);
    let (code, text) = failure(d.on_frame(open(1, CAPACITY, 2), now).unwrap());
    assert_eq!(code, Code::Unavailable, "{text}");
    d.on_frame(open(2, CAPACITY, 0), now).unwrap();
    let (code, _) = failure(d.on_frame(open(3, CAPACITY, 1), now).unwrap());
    assert_eq!(code, Code::ResourceExhausted);
    d.closed(2);
    d.drain();
    let (code, _) = failure(d.on_frame(open(4, CAPACITY, 1), now).unwrap());
    assert_eq!(code, Code::Unavailable);
    let (code, _) = failure(d.on_frame(open(5, "nomethod", 1), now).unwrap());
    assert_eq!(code, Code::Unavailable, "draining comes first");
    let mut d = demux(1, 1 << 20);
    let (code, _) = failure(d.on_frame(open(5, "/nomethod", 1), now).unwrap());
    assert_eq!(code, Code::InvalidArgument);
}

#[test]
fn sizes_are_checked_before_buffering_and_chunks_must_add_up() {
    let now = Instant::now();
    let mut d = demux(8, 100_000);
    d.on_frame(open(1, CAPACITY, 1), now).unwrap();
    let (code, text) = failure(d.on_frame(message(1, 100_001, 10), now).unwrap());
    assert_eq!(code, Code::ResourceExhausted);
    assert!(text.contains("100001"), "{text}");

    d.on_frame(open(2, CAPACITY, 1), now).unwrap();
    assert!(matches!(
        d.on_frame(message(2, 20_000, 16_384), now).unwrap(),
        Event::Data {
            size: Some(20_000),
            ..
        }
    ));
    let (code, _) = failure(
        d.on_frame(more(2, 4_000), now)
            .map(|e| match e {
                Event::Data { .. } => d.on_frame(more(2, 1), now).unwrap(),
                other => other,
            })
            .unwrap(),
    );
    assert_eq!(
        code,
        Code::InvalidArgument,
        "one byte past the declared size"
    );

    d.on_frame(open(3, CAPACITY, 1), now).unwrap();
    let (code, _) = failure(d.on_frame(more(3, 1), now).unwrap());
    assert_eq!(code, Code::InvalidArgument, "data without an envelope");

    d.on_frame(open(4, CAPACITY, 1), now).unwrap();
    d.on_frame(message(4, 10, 5), now).unwrap();
    let (code, _) = failure(d.on_frame(frame(4, Frame::HalfClose(())), now).unwrap());
    assert_eq!(code, Code::InvalidArgument, "half-close mid-message");

    d.on_frame(open(5, CAPACITY, 1), now).unwrap();
    d.on_frame(message(5, 1, 1), now).unwrap();
    let (code, text) = failure(d.on_frame(message(5, 1, 1), now).unwrap());
    assert_eq!(code, Code::InvalidArgument);
    assert!(text.contains("second request message"), "{text}");
}

#[test]
fn the_window_is_enforced_per_stream_and_given_back_on_consumption() {
    let now = Instant::now();
    let mut d = demux(8, 1 << 20);
    let Event::Open(stream) = d.on_frame(open(1, CAPACITY, 1), now).unwrap() else {
        panic!()
    };
    d.on_frame(message(1, 200_000, 16_384), now).unwrap();
    for _ in 0..3 {
        d.on_frame(more(1, 16_384), now).unwrap();
    }
    assert_eq!(stream.credit.left(), 0);
    let (code, _) = failure(d.on_frame(more(1, 1), now).unwrap());
    assert_eq!(code, Code::ResourceExhausted);

    let Event::Open(stream) = d.on_frame(open(2, CAPACITY, 1), now).unwrap() else {
        panic!()
    };
    d.on_frame(message(2, 200_000, 16_384), now).unwrap();
    stream.credit.give(16_384);
    for _ in 0..4 {
        assert!(matches!(
            d.on_frame(more(2, 16_384), now).unwrap(),
            Event::Data { .. }
        ));
    }
    // A peer overrunning in one chunk fails its stream only.
    d.on_frame(open(3, CAPACITY, 1), now).unwrap();
    let (code, _) = failure(d.on_frame(message(3, 70_000, 70_000), now).unwrap());
    assert_eq!(code, Code::ResourceExhausted);
    assert!(matches!(
        d.on_frame(open(4, CAPACITY, 1), now),
        Ok(Event::Open(_))
    ));
}

#[test]
fn a_unary_request_with_no_message_gets_the_default_one() {
    let now = Instant::now();
    let mut d = demux(8, 1 << 20);
    d.on_frame(open(1, CAPACITY, 1), now).unwrap();
    assert!(matches!(
        d.on_frame(frame(1, Frame::HalfClose(())), now).unwrap(),
        Event::HalfClose {
            empty_message: true,
            ..
        }
    ));
    d.on_frame(open(2, CAPACITY, 1), now).unwrap();
    d.on_frame(message(2, 0, 0), now).unwrap();
    assert!(matches!(
        d.on_frame(frame(2, Frame::HalfClose(())), now).unwrap(),
        Event::HalfClose {
            empty_message: false,
            ..
        }
    ));
    let (code, _) = failure(d.on_frame(message(2, 1, 1), now).unwrap());
    assert_eq!(code, Code::InvalidArgument, "data after half-close");
}

#[test]
fn idle_streams_are_those_with_an_open_request_side_and_no_recent_frame() {
    let start = Instant::now();
    let mut d = demux(8, 1 << 20);
    d.on_frame(open(1, CAPACITY, 1), start).unwrap();
    d.on_frame(open(2, CAPACITY, 1), start).unwrap();
    d.on_frame(frame(2, Frame::HalfClose(())), start).unwrap();
    let later = start + Duration::from_secs(10);
    d.on_frame(open(3, CAPACITY, 1), later).unwrap();
    assert_eq!(d.idle_since(start + Duration::from_secs(5)), vec![1]);
}

#[test]
fn a_failed_stream_discards_and_grants_back_its_data_until_it_half_closes() {
    let now = Instant::now();
    let mut d = demux(8, 100_000);
    d.on_frame(open(1, CAPACITY, 1), now).unwrap();
    // Over the limit: failed, the first chunk granted back.
    let event = d.on_frame(message(1, 5_000_000, 16_384), now).unwrap();
    assert!(
        matches!(event, Event::Fail { window_update: 16_384, ref failure, .. } if failure.code == Code::ResourceExhausted),
        "{event:?}"
    );
    // The handler is gone; the market goes on sending the message: each chunk granted back.
    d.closed(1);
    for _ in 0..10 {
        assert!(matches!(
            d.on_frame(more(1, 16_384), now).unwrap(),
            Event::Discard {
                id: 1,
                window_update: 16_384
            }
        ));
    }
    assert!(matches!(
        d.on_frame(frame(1, Frame::HalfClose(())), now).unwrap(),
        Event::Ignored
    ));
    assert!(
        matches!(d.on_frame(more(1, 1), now).unwrap(), Event::Ignored),
        "late"
    );
    assert_eq!(d.open_streams(), 0);
    // Revision 0 has no windows to grant.
    d.on_frame(open(2, CAPACITY, 0), now).unwrap();
    assert!(matches!(
        d.on_frame(message(2, 5_000_000, 16_384), now).unwrap(),
        Event::Fail {
            window_update: 0,
            ..
        }
    ));
    assert!(matches!(
        d.on_frame(more(2, 16_384), now).unwrap(),
        Event::Discard {
            window_update: 0,
            ..
        }
    ));
}
