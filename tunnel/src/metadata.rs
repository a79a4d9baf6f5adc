//! Metadata and status between the tunnel's frames and HTTP/2 gRPC: request metadata into
//! headers, response headers and trailers into tunnel metadata, the gRPC status into
//! `google.rpc.Status` (details kept), and `grpc-timeout`.

use std::time::Duration;

use fog_proto::google::rpc::Status as RpcStatus;
use fog_proto::grpctunnel::v1::{metadata::Values, Metadata};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use tonic::Code;

/// Headers the transport owns: never copied from a market's metadata, never sent back as
/// metadata.
fn reserved(name: &str) -> bool {
    name.ends_with("-bin")
        || matches!(
            name,
            "content-type"
                | "te"
                | "host"
                | "connection"
                | "user-agent"
                | "grpc-status"
                | "grpc-message"
                | "grpc-status-details-bin"
                | "grpc-encoding"
                | "grpc-accept-encoding"
                | "grpc-timeout"
        )
        || name.starts_with(':')
}

/// The request headers of a tunnelled call: the gRPC ones, then the market's metadata (keys
/// lowercased; reserved, binary and malformed entries dropped).
pub fn request_headers(metadata: Option<&Metadata>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    for (key, values) in metadata.iter().flat_map(|m| m.md.iter()) {
        let key = key.to_ascii_lowercase();
        if reserved(&key) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            continue;
        };
        for value in &values.val {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(name.clone(), value);
            }
        }
    }
    headers
}

/// `grpc-timeout` from a market's metadata, if present and well-formed (1 to 8 digits and a
/// unit: H, M, S, m, u, n).
pub fn grpc_timeout(metadata: Option<&Metadata>) -> Option<Duration> {
    let values = metadata?
        .md
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("grpc-timeout"))?;
    parse_timeout(values.1.val.last()?)
}

fn parse_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Response headers or trailers as tunnel metadata (gRPC's own and binary entries left out).
pub fn to_metadata(headers: &HeaderMap) -> Metadata {
    let mut md = Metadata::default();
    for (name, value) in headers {
        if reserved(name.as_str()) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        md.md
            .entry(name.as_str().to_owned())
            .or_insert_with(Values::default)
            .val
            .push(value.to_owned());
    }
    md
}

/// The status a header map carries (trailers, or the headers of a trailers-only response).
pub fn status_of(headers: &HeaderMap) -> Option<RpcStatus> {
    tonic::Status::from_header_map(headers).map(|status| rpc_status(&status))
}

/// A tonic status as `google.rpc.Status`: the details a service attached are kept (tonic
/// carries the encoded `google.rpc.Status` in `grpc-status-details-bin`).
pub fn rpc_status(status: &tonic::Status) -> RpcStatus {
    let details = match RpcStatus::decode(status.details()) {
        Ok(decoded) if !status.details().is_empty() => decoded.details,
        _ => Vec::new(),
    };
    RpcStatus {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details,
    }
}

/// A status with no details.
pub fn simple_status(code: Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        let mut md = Metadata::default();
        for (k, v) in pairs {
            md.md
                .entry((*k).to_owned())
                .or_insert_with(Values::default)
                .val
                .push((*v).to_owned());
        }
        md
    }

    #[test]
    fn timeouts_parse_like_grpc() {
        for (text, want) in [
            ("300m", Some(Duration::from_millis(300))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789n", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
            ("", None),
        ] {
            assert_eq!(parse_timeout(text), want, "{text:?}");
        }
        assert_eq!(
            grpc_timeout(Some(&md(&[("Grpc-Timeout", "20m")]))),
            Some(Duration::from_millis(20))
        );
    }

    #[test]
    fn market_metadata_cannot_set_transport_headers() {
        let headers = request_headers(Some(&md(&[
            ("X-Trace", "abc"),
            ("content-type", "text/plain"),
            ("grpc-encoding", "gzip"),
            ("key-bin", "AAAA"),
            (":path", "/evil"),
            ("bad key", "x"),
        ])));
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["x-trace"], "abc");
        assert!(headers.get("grpc-encoding").is_none());
        assert!(headers.get("key-bin").is_none());
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn statuses_keep_their_details() {
        let inner = RpcStatus {
            code: Code::InvalidArgument as i32,
            message: "bad".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/x".into(),
                value: vec![1, 2],
            }],
        };
        let status =
            tonic::Status::with_details(Code::InvalidArgument, "bad", inner.encode_to_vec().into());
        let converted = rpc_status(&status);
        assert_eq!(converted, inner);
        let headers = status.into_http::<()>().into_parts().0.headers;
        assert_eq!(status_of(&headers), Some(converted));
    }
}
