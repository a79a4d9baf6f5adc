//! The tunnel end to end in memory: a market's frames in, the agent's frames out, through a
//! small gRPC service (echo of a requested size, an endless stream, a failure with details).
//! The wire-level conformance against real markets (grpctunnel-py, a scripted Python market)
//! runs in the agent's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fog_proto::google::rpc::Status as RpcStatus;
use fog_proto::grpctunnel::v1::{
    client_to_server::Frame as In, metadata::Values, server_to_client::Frame as Out,
    ClientToServer, MessageData, Metadata, NewStream, ServerToClient,
};
use fog_tunnel::{outbound, MethodTable, OutboundStream, TunnelConfig, TunnelEnd, TunnelServer};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::Code;

type Inbound = mpsc::UnboundedSender<Result<ClientToServer, tonic::Status>>;

/// `t.T/Echo`: the request's first 4 bytes (LE) are the size of the one answer;
/// `t.T/Stream`: a message every 20 ms until cancelled; `t.T/Fail`: INVALID_ARGUMENT with
/// details, trailers-only.
async fn service(
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let grpc_response = |body: tonic::body::Body| {
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("x-served-by", "test")
            .body(body)
            .unwrap()
    };
    match path.as_str() {
        "/t.T/Echo" => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let size = u32::from_le_bytes([body[5], body[6], body[7], body[8]]) as usize;
            let mut framed = BytesMut::new();
            framed.put_u8(0);
            framed.put_u32(size as u32);
            framed.extend((0..size).map(|i| (i % 251) as u8));
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = futures_util::stream::iter([
                Ok::<_, tonic::Status>(http_body::Frame::data(framed.freeze())),
                Ok(http_body::Frame::trailers(trailers)),
            ]);
            Ok(grpc_response(tonic::body::Body::new(StreamBody::new(
                frames,
            ))))
        }
        "/t.T/Stream" => {
            let frames = futures_util::stream::unfold(0u32, |n| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut framed = BytesMut::new();
                framed.put_u8(0);
                framed.put_u32(4);
                framed.put_u32(n);
                Some((
                    Ok::<_, tonic::Status>(http_body::Frame::data(framed.freeze())),
                    n + 1,
                ))
            });
            Ok(grpc_response(tonic::body::Body::new(StreamBody::new(
                frames,
            ))))
        }
        _ => {
            let details = RpcStatus {
                code: Code::InvalidArgument as i32,
                message: "field x".into(),
                details: vec![prost_types::Any {
                    type_url: "type.googleapis.com/t.Detail".into(),
                    value: vec![9, 9],
                }],
            };
            let status = tonic::Status::with_details(
                Code::InvalidArgument,
                "field x",
                details.encode_to_vec().into(),
            );
            Ok(status.into_http())
        }
    }
}

fn methods() -> MethodTable {
    use prost_types::{
        FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
    };
    let method = |name: &str, server_streaming| MethodDescriptorProto {
        name: Some(name.into()),
        server_streaming: Some(server_streaming),
        ..Default::default()
    };
    let set = FileDescriptorSet {
        file: vec![FileDescriptorProto {
            package: Some("t".into()),
            service: vec![ServiceDescriptorProto {
                name: Some("T".into()),
                method: vec![
                    method("Echo", false),
                    method("Stream", true),
                    method("Fail", false),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    MethodTable::from_descriptor_sets(&[&set.encode_to_vec()]).unwrap()
}

struct Market {
    to_agent: Inbound,
    from_agent: OutboundStream,
    tunnel: tokio::task::JoinHandle<TunnelEnd>,
}

fn start(negotiated: bool, max_streams: usize) -> Market {
    let server = TunnelServer::new(
        tower::service_fn(service),
        TunnelConfig {
            max_streams,
            max_message_bytes: 100_000,
            stream_idle_timeout: Duration::from_secs(5),
            unary_timeout: Some(Duration::from_secs(10)),
        },
        methods(),
    );
    let (to_agent, rx) = mpsc::unbounded_channel();
    let inbound = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let (out, from_agent) = outbound();
    let (_drain_tx, drain) = watch::channel(false);
    let tunnel = tokio::spawn(async move {
        let _keep = _drain_tx;
        server
            .serve(
                Box::pin(inbound),
                out,
                negotiated,
                http::Extensions::new(),
                drain,
                Arc::default(),
            )
            .await
    });
    Market {
        to_agent,
        from_agent,
        tunnel,
    }
}

impl Market {
    fn send(&self, id: i64, frame: In) {
        self.to_agent
            .send(Ok(ClientToServer {
                stream_id: id,
                frame: Some(frame),
            }))
            .unwrap();
    }

    fn open(&self, id: i64, method: &str, window: u32, headers: &[(&str, &str)]) {
        let mut md = Metadata::default();
        for (k, v) in headers {
            md.md.insert(
                (*k).into(),
                Values {
                    val: vec![(*v).into()],
                },
            );
        }
        self.send(
            id,
            In::NewStream(NewStream {
                method_name: method.into(),
                request_headers: Some(md),
                initial_window_size: window,
                protocol_revision: 1,
            }),
        );
    }

    /// A whole request message in 16 KiB chunks, then half-close.
    fn request(&self, id: i64, message: &[u8]) {
        let mut chunks = message.chunks(16_384);
        let first = chunks.next().unwrap_or_default();
        self.send(
            id,
            In::RequestMessage(MessageData {
                size: message.len() as u32,
                data: Bytes::copy_from_slice(first),
            }),
        );
        for chunk in chunks {
            self.send(id, In::MoreRequestData(Bytes::copy_from_slice(chunk)));
        }
        self.send(id, In::HalfClose(()));
    }

    async fn next(&mut self) -> ServerToClient {
        tokio::time::timeout(Duration::from_secs(5), self.from_agent.next())
            .await
            .expect("a frame within 5 s")
            .expect("the outbound stream never ends")
    }

    /// Frames of stream `id` until its close, skipping window updates and other streams.
    async fn until_close(&mut self, id: i64) -> (Vec<Out>, RpcStatus) {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            if frame.stream_id != id {
                continue;
            }
            match frame.frame.unwrap() {
                Out::CloseStream(close) => return (frames, close.status.unwrap()),
                Out::WindowUpdate(_) => {}
                other => frames.push(other),
            }
        }
    }
}

fn echo_request(size: u32, len: usize) -> Vec<u8> {
    let mut request = size.to_le_bytes().to_vec();
    request.resize(len.max(4), 0);
    request
}

#[tokio::test]
async fn settings_come_first_and_a_large_answer_follows_a_tiny_window() {
    let mut market = start(true, 16);
    let settings = market.next().await;
    assert_eq!(settings.stream_id, -1);
    let Some(Out::Settings(settings)) = settings.frame else {
        panic!("{settings:?}")
    };
    assert_eq!(settings.supported_protocol_revisions, [0, 1]);
    assert_eq!(settings.initial_window_size, 65_536);

    market.open(1, "/t.T/Echo", 100, &[("x-trace", "7")]);
    market.request(1, &echo_request(40_000, 4));
    let mut headers = market.next().await;
    // The window update for the consumed request chunk may come first (control frames do).
    if matches!(headers.frame, Some(Out::WindowUpdate(4))) {
        headers = market.next().await;
    }
    let Some(Out::ResponseHeaders(headers)) = headers.frame else {
        panic!("{headers:?}")
    };
    assert_eq!(headers.md["x-served-by"].val, ["test"]);
    assert!(!headers.md.contains_key("content-type"));
    let mut received = Vec::new();
    let mut window = 100usize;
    while received.len() < 40_000 {
        let frame = market.next().await;
        let data = match frame.frame.unwrap() {
            Out::ResponseMessage(m) => {
                assert_eq!(m.size, 40_000);
                m.data
            }
            Out::MoreResponseData(d) => d,
            Out::WindowUpdate(_) => continue,
            other => panic!("{other:?}"),
        };
        assert!(
            data.len() <= window.min(16_384),
            "{} > window {window}",
            data.len()
        );
        window -= data.len();
        received.extend_from_slice(&data);
        if window == 0 {
            // Nothing more comes until the market grants some window.
            assert!(
                tokio::time::timeout(Duration::from_millis(100), market.from_agent.next())
                    .await
                    .is_err()
            );
            market.send(1, In::WindowUpdate(7_000));
            window += 7_000;
        }
    }
    assert!(received
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
    let (rest, status) = market.until_close(1).await;
    assert!(rest.is_empty());
    assert_eq!(status.code, 0);
}

#[tokio::test]
async fn requests_on_the_16_kib_boundary_and_the_empty_request() {
    let mut market = start(false, 16);
    for (id, len) in [(1, 16_384), (2, 16_385), (3, 32_768)] {
        market.open(id, "t.T/Echo", 65_536, &[]);
        market.request(id, &echo_request(10, len));
        let (frames, status) = market.until_close(id).await;
        assert_eq!(status.code, 0, "{len}: {status:?}");
        assert!(matches!(frames[0], Out::ResponseHeaders(_)));
        assert!(matches!(&frames[1], Out::ResponseMessage(m) if m.size == 10));
    }
    // Over the limit: refused on the declared size.
    market.open(4, "t.T/Echo", 65_536, &[]);
    market.send(
        4,
        In::RequestMessage(MessageData {
            size: 100_001,
            data: Bytes::new(),
        }),
    );
    let (_, status) = market.until_close(4).await;
    assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
    // No message then half-close: the service gets the default (empty) message, which this
    // test service cannot read a size from; the tunnel hands it on and survives.
    market.open(5, "t.T/Fail", 65_536, &[]);
    market.send(5, In::HalfClose(()));
    let (_, status) = market.until_close(5).await;
    assert_eq!(status.code, Code::InvalidArgument as i32);
}

#[tokio::test]
async fn statuses_keep_details_and_unknown_methods_reach_the_service() {
    let mut market = start(false, 16);
    market.open(1, "t.T/Fail", 65_536, &[]);
    market.request(1, &[]);
    let (frames, status) = market.until_close(1).await;
    assert!(
        matches!(frames.as_slice(), [Out::ResponseHeaders(_)]),
        "{frames:?}"
    );
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert_eq!(status.message, "field x");
    assert_eq!(status.details[0].type_url, "type.googleapis.com/t.Detail");
}

#[tokio::test]
async fn cancel_and_grpc_timeout_end_a_stream_and_others_go_on() {
    let mut market = start(false, 16);
    market.open(1, "t.T/Stream", 65_536, &[]);
    market.request(1, &[1]);
    assert!(matches!(
        market.next().await.frame,
        Some(Out::ResponseHeaders(_))
    ));
    assert!(matches!(
        market.next().await.frame,
        Some(Out::ResponseMessage(_))
    ));
    market.send(1, In::Cancel(()));
    let (_, status) = market.until_close(1).await;
    assert_eq!(status.code, Code::Cancelled as i32);

    market.open(2, "t.T/Stream", 65_536, &[("grpc-timeout", "150m")]);
    market.request(2, &[1]);
    let started = std::time::Instant::now();
    let (frames, status) = market.until_close(2).await;
    assert_eq!(status.code, Code::DeadlineExceeded as i32);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(frames.len() >= 2, "messages came before the deadline");
}

#[tokio::test]
async fn a_stalled_stream_does_not_stall_ten_others() {
    let mut market = start(true, 16);
    let _settings = market.next().await;
    // A stream whose market never grants window: its sender waits, nothing else does.
    market.open(1, "t.T/Stream", 0, &[]);
    market.request(1, &[1]);
    for id in 2..12 {
        market.open(id, "t.T/Echo", 65_536, &[]);
        market.request(id, &echo_request(30_000, 4));
    }
    let mut closed = std::collections::BTreeSet::new();
    while closed.len() < 10 {
        let frame = market.next().await;
        if let Some(Out::CloseStream(close)) = frame.frame {
            assert_eq!(close.status.unwrap().code, 0);
            closed.insert(frame.stream_id);
        }
    }
    assert_eq!(
        closed.into_iter().collect::<Vec<_>>(),
        (2..12).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_stream_cap_and_overruns_fail_streams_and_duplicate_ids_end_the_tunnel() {
    let mut market = start(true, 1);
    let _settings = market.next().await;
    market.open(1, "t.T/Stream", 65_536, &[]);
    market.request(1, &[1]);
    market.open(2, "t.T/Echo", 65_536, &[]);
    let (_, status) = market.until_close(2).await;
    assert_eq!(
        status.code,
        Code::ResourceExhausted as i32,
        "over max_streams"
    );
    market.send(1, In::Cancel(()));
    let (_, status) = market.until_close(1).await;
    assert_eq!(status.code, Code::Cancelled as i32);

    market.open(3, "t.T/Echo", 65_536, &[]);
    market.send(
        3,
        In::RequestMessage(MessageData {
            size: 70_000,
            data: Bytes::from(vec![0; 70_000]),
        }),
    );
    let (_, status) = market.until_close(3).await;
    assert_eq!(
        status.code,
        Code::ResourceExhausted as i32,
        "window overrun"
    );
    // The failed stream's data was discarded and granted back; it counts against the cap
    // until the market half-closes it.
    market.send(3, In::HalfClose(()));

    market.open(4, "t.T/Echo", 65_536, &[]);
    market.request(4, &echo_request(1, 4));
    let (_, status) = market.until_close(4).await;
    assert_eq!(status.code, 0, "the tunnel survived the overrun");

    market.open(4, "t.T/Echo", 65_536, &[]);
    let end = tokio::time::timeout(Duration::from_secs(5), market.tunnel)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, TunnelEnd::Protocol(_)), "{end:?}");
}

#[tokio::test]
async fn open_streams_are_uncounted_when_the_tunnel_is_dropped() {
    let server = TunnelServer::new(
        tower::service_fn(service),
        TunnelConfig {
            max_streams: 8,
            max_message_bytes: 100_000,
            stream_idle_timeout: Duration::from_secs(5),
            unary_timeout: None,
        },
        methods(),
    );
    let stats = Arc::new(fog_tunnel::TunnelStats::default());
    let (to_agent, rx) = mpsc::unbounded_channel::<Result<ClientToServer, tonic::Status>>();
    let inbound = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let (out, mut from_agent) = outbound();
    let (_drain_tx, drain) = watch::channel(false);
    let tunnel = {
        let stats = stats.clone();
        tokio::spawn(async move {
            server
                .serve(
                    Box::pin(inbound),
                    out,
                    false,
                    http::Extensions::new(),
                    drain,
                    stats,
                )
                .await
        })
    };
    for id in 1..4 {
        for frame in [
            In::NewStream(NewStream {
                method_name: "t.T/Stream".into(),
                ..NewStream::default()
            }),
            In::RequestMessage(MessageData {
                size: 1,
                data: Bytes::from_static(&[1]),
            }),
            In::HalfClose(()),
        ] {
            to_agent
                .send(Ok(ClientToServer {
                    stream_id: id,
                    frame: Some(frame),
                }))
                .unwrap();
        }
    }
    // Three streams answering: their first messages arrive.
    let mut messages = 0;
    while messages < 3 {
        if let Some(Out::ResponseMessage(_)) = from_agent.next().await.unwrap().frame {
            messages += 1;
        }
    }
    assert_eq!(stats.streams_open(), 3);
    assert_eq!(stats.streams_total(), 3);
    tunnel.abort();
    let _ = tunnel.await;
    assert_eq!(stats.streams_open(), 0);
}

#[tokio::test]
async fn a_one_mebibyte_answer_comes_in_16_kib_chunks_as_the_window_is_granted() {
    let mut market = start(true, 16);
    let _settings = market.next().await;
    market.open(1, "t.T/Echo", 65_536, &[]);
    market.request(1, &echo_request(1 << 20, 4));
    let mut received = Vec::with_capacity(1 << 20);
    loop {
        let frame = market.next().await;
        let data = match frame.frame.unwrap() {
            Out::ResponseMessage(m) => {
                assert_eq!(m.size, 1 << 20);
                m.data
            }
            Out::MoreResponseData(d) => d,
            Out::CloseStream(close) => {
                assert_eq!(close.status.unwrap().code, 0);
                break;
            }
            _ => continue,
        };
        assert!(data.len() <= 16_384);
        received.extend_from_slice(&data);
        // The market consumes each chunk at once, as grpctunnel-py does.
        market.send(1, In::WindowUpdate(data.len() as u32));
    }
    assert_eq!(received.len(), 1 << 20);
    assert!(received
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
}
